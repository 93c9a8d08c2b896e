/*
 * proxy/h1.c: the HTTP/1.x codec (RFC 9112).
 *
 * Everything here is a pure function over caller-owned bytes: no I/O, no
 * allocation, no global mutable state, so it is safe from any thread.  The
 * parsers return views (struct h1_str) that point into the array they were
 * given; the caller keeps that array alive while it uses the views.
 *
 * The parsers are deliberately strict: a proxy that is more lenient than the
 * backend behind it (or the other way round) is how request smuggling and
 * response splitting happen, so every framing ambiguity RFC 9112 lets a
 * recipient reject is rejected (CL+TE, differing Content-Length, obs-fold,
 * bare LF, whitespace before the colon, CTLs in values, bad chunk sizes).
 *
 * Scanning is table driven (one 256-entry class table, one lookup per byte,
 * no per-byte calls), 16 bytes per step with SSE2 (line ends too; memchr()
 * for the tail).  The parsers also tell each header's kind to a proxy
 * (hop-by-hop, forwarding, Host, Upgrade, Content-Length, underscore twins),
 * so that the connection code never compares names itself.
 */
#include "proxy/h1.h"

#include <stddef.h>
#include <string.h>
#include <strings.h>

/* At most this many empty lines before a request line (RFC 9112 §2.2 asks
 * servers to ignore "at least one"); keeps h1_find_head_end O(1) per call. */
#define H1_MAX_LEADING_EMPTY 8

/* Longest chunk-size line (extensions included) or trailer line. */
#define H1_CHUNK_LINE_MAX 4096
/* Longest trailer section, final CRLF included (the default header limit). */
#define H1_TRAILER_MAX 65536

/* Character classes (bits of h1_cls[]). */
enum {
    C_TCHAR  = 1,   /* token character (RFC 9110 §5.6.2) */
    C_FIELD  = 2,   /* field-value byte: HTAB, SP, VCHAR, obs-text (§5.5) */
    C_TARGET = 4,   /* request-target byte: VCHAR or obs-text, no SP/CTL */
    C_HEX    = 8,   /* HEXDIG */
    C_OWS    = 16,  /* SP or HTAB */
};

static const uint8_t h1_cls[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0, 18,  0,  0,  0,  0,  0,  0,
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,
    18,  7,  6,  7,  7,  7,  7,  7,  6,  6,  7,  7,  6,  7,  7,  6,
    15, 15, 15, 15, 15, 15, 15, 15, 15, 15,  6,  6,  6,  6,  6,  6,
     6, 15, 15, 15, 15, 15, 15,  7,  7,  7,  7,  7,  7,  7,  7,  7,
     7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  6,  6,  6,  7,  7,
     7, 15, 15, 15, 15, 15, 15,  7,  7,  7,  7,  7,  7,  7,  7,  7,
     7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  6,  7,  6,  7,  0,
    [0x80 ... 0xff] = C_FIELD | C_TARGET,
};

#define CLS(ch, bit) (h1_cls[(unsigned char)(ch)] & (bit))

/*
 * Scanners: the first byte at or after p that is not of a class, or end.
 * With SSE2 (every x86-64) they test 16 bytes per step; the tail, and
 * other machines, use the table.
 */
#if defined(__SSE2__)
#include <emmintrin.h>

static inline __m128i load16(const char *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* Bytes of v that are <= max (unsigned). */
static inline __m128i le_u8(__m128i v, char max)
{
    return _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(max)), v);
}
#endif

/*
 * Visible bytes (VCHAR, obs-text), and with blanks also SP and HTAB: C_FIELD
 * (with blanks) or C_TARGET (without).  Stops at CTLs and DEL: CR, LF, NUL.
 */
static inline const char *skip_visible(const char *p, const char *end, int blanks)
{
#if defined(__SSE2__)
    while (end - p >= 16) {
        __m128i v = load16(p);
        __m128i ctl = le_u8(v, blanks ? 0x1f : 0x20);
        if (blanks)
            ctl = _mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\t')), ctl);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f))));
        if (m)
            return p + __builtin_ctz(m);
        p += 16;
    }
#endif
    unsigned cls = blanks ? C_FIELD : C_TARGET;
    while (p < end && CLS(*p, cls))
        p++;
    return p;
}

#define skip_field(p, end) skip_visible((p), (end), 1)
#define skip_target(p, end) skip_visible((p), (end), 0)

/* C_TCHAR.  The vector step passes letters, digits and '-' (nearly every
 * field name); at any other byte the table decides. */
static inline const char *skip_token(const char *p, const char *end)
{
#if defined(__SSE2__)
    while (end - p >= 16) {
        __m128i v = load16(p);
        /* x in [lo, lo + n): x - lo + 0x80 < 0x80 + n, compared signed. */
        __m128i lc = _mm_or_si128(v, _mm_set1_epi8(0x20));
        __m128i alpha = _mm_cmplt_epi8(_mm_add_epi8(lc, _mm_set1_epi8((char)(0x80 - 'a'))),
                                       _mm_set1_epi8((char)(0x80 + 26)));
        __m128i digit = _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - '0'))),
                                       _mm_set1_epi8((char)(0x80 + 10)));
        __m128i dash = _mm_cmpeq_epi8(v, _mm_set1_epi8('-'));
        unsigned ok = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(alpha, digit), dash));
        unsigned m = ~ok & 0xffffu;
        if (m == 0) {
            p += 16;
            continue;
        }
        p += __builtin_ctz(m);
        if (!CLS(*p, C_TCHAR))
            return p;
        p++;
    }
#endif
    while (p < end && CLS(*p, C_TCHAR))
        p++;
    return p;
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static inline unsigned hexval(unsigned char c)
{
    return c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
}

/*
 * Case-insensitive comparison of p[0..n) with lit, 8 bytes per step.  lit
 * holds only lowercase letters, digits and "-:/".  Setting bit 0x20 lowers a
 * letter and leaves those others as they are; the bytes it could turn into
 * one of them (CTLs: 0x0d into '-', 0x1a into ':', 0x10-0x19 into digits)
 * never reach here: names, values and targets are validated first.
 */
static inline int ieq_n(const char *p, size_t n, const char *lit, size_t litlen)
{
    if (n != litlen)
        return 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t a, b;
        memcpy(&a, p + i, 8);
        memcpy(&b, lit + i, 8);
        if ((a | 0x2020202020202020ULL) != b)
            return 0;
    }
    for (; i < n; i++)
        if (((unsigned char)p[i] | 0x20) != (unsigned char)lit[i])
            return 0;
    return 1;
}

#define IEQ(s, lit) ieq_n((s).p, (s).len, lit, sizeof(lit) - 1)

int h1_str_ieq(struct h1_str s, const char *lit)
{
    size_t n = strlen(lit);
    if (s.len != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

const struct h1_header *h1_find_header(const struct h1_header *hs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (h1_str_ieq(hs[i].name, name))
            return &hs[i];
    return NULL;
}

/*
 * Iterates the elements of a comma-separated list (RFC 9110 §5.6.1).
 * *pos walks from the start of the value to end; each call stores the next
 * element, OWS-trimmed, in *out (which may be empty for ",," forms) and
 * returns 1, or returns 0 when the list is exhausted.
 */
static int list_next(const char **pos, const char *end, struct h1_str *out)
{
    const char *p = *pos;
    if (p > end)
        return 0;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *e = comma ? comma : end;
    const char *s = p;
    while (s < e && CLS(*s, C_OWS))
        s++;
    const char *t = e;
    while (t > s && CLS(t[-1], C_OWS))
        t--;
    out->p = s;
    out->len = (size_t)(t - s);
    *pos = e + 1;   /* one past end when there is no comma: stops next call */
    return 1;
}

/* The protocol name of an Upgrade list element: "name[/version]". */
static struct h1_str upgrade_name(struct h1_str e)
{
    const char *slash = memchr(e.p, '/', e.len);
    if (slash)
        e.len = (size_t)(slash - e.p);
    return e;
}

static int upgrade_offered(struct h1_str asked, struct h1_str name)
{
    const char *pos = asked.p, *end = asked.p + asked.len;
    struct h1_str e;
    while (list_next(&pos, end, &e)) {
        e = upgrade_name(e);
        if (e.len == name.len && e.len > 0 && strncasecmp(e.p, name.p, e.len) == 0)
            return 1;
    }
    return 0;
}

int h1_upgrade_matches(struct h1_str asked, struct h1_str answered)
{
    if (asked.len == 0 || answered.len == 0)
        return 0;
    const char *pos = answered.p, *end = answered.p + answered.len;
    struct h1_str e;
    int any = 0;
    while (list_next(&pos, end, &e)) {
        if (e.len == 0)
            continue;   /* empty list elements are allowed and ignored (RFC 9110 §5.6.1) */
        if (!upgrade_offered(asked, upgrade_name(e)))
            return 0;
        any = 1;
    }
    return any;
}

int64_t h1_parse_content_length(struct h1_str v)
{
    /* RFC 9110 §8.6: Content-Length = 1*DIGIT.  The cap (2^62) leaves room
     * for the caller to add counters without overflow. */
    const int64_t cap = (int64_t)1 << 62;
    if (v.len == 0)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char c = (unsigned char)v.p[i];
        if (c < '0' || c > '9')
            return -1;
        if (n > (cap - (c - '0')) / 10)
            return -1;
        n = n * 10 + (c - '0');
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Head boundary                                                        */

/* The LF at buf[i]: -400 when bare (§2.2), 1 when it ends a CRLF CRLF whose
 * first CRLF closes a line at or after s, else 0. */
static inline int lf_ends(const char *buf, size_t i, size_t s)
{
    if (i == 0 || buf[i - 1] != '\r')
        return -400;
    return i >= 3 && i - 3 >= s && buf[i - 2] == '\n' && buf[i - 3] == '\r';
}

ssize_t h1_find_head_end(const char *buf, size_t len, size_t *scanned, size_t max)
{
    /* Leading empty lines (RFC 9112 §2.2) belong to the head; the end is the
     * first CRLF CRLF whose first CRLF closes a non-empty line, i.e. one that
     * starts at or after the first non-empty line (s). */
    size_t s = 0, pairs = 0;
    while (s + 1 < len && buf[s] == '\r' && buf[s + 1] == '\n') {
        s += 2;
        if (++pairs > H1_MAX_LEADING_EMPTY)
            return -400;
    }

    size_t limit = len < max ? len : max;
    /* Resume 3 bytes early: the CRLF CRLF may straddle the old stop point. */
    size_t from = *scanned;
    if (from > len)
        from = 0;
    from = from > 3 ? from - 3 : 0;

    while (from < limit) {
#if defined(__SSE2__)
        /* Every LF of 16 bytes at once, in order. */
        if (limit - from >= 16) {
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(load16(buf + from), _mm_set1_epi8('\n')));
            for (; m != 0; m &= m - 1) {
                size_t i = from + (size_t)__builtin_ctz(m);
                int rc = lf_ends(buf, i, s);
                if (rc < 0)
                    return rc;
                if (rc > 0) {
                    *scanned = i + 1;
                    return (ssize_t)(i + 1);
                }
            }
            from += 16;
            continue;
        }
#endif
        const char *lf = memchr(buf + from, '\n', limit - from);
        if (lf == NULL)
            break;
        size_t i = (size_t)(lf - buf);
        int rc = lf_ends(buf, i, s);
        if (rc < 0)
            return rc;
        if (rc > 0) {
            *scanned = i + 1;
            return (ssize_t)(i + 1);
        }
        from = i + 1;
    }
    if (len >= max)
        return -431;                            /* end would be beyond max */
    *scanned = len;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Field section                                                        */

/* What the field section says about framing and the connection. */
struct h1_fields {
    int host_count;
    struct h1_str host;
    int has_cl;
    int cl_bad;
    int cl_list;            /* Content-Length given more than once ("5, 5", or repeated) */
    int has_date;
    int64_t cl;
    int has_te;
    int te_codings;         /* non-empty elements seen */
    int te_last_chunked;
    int te_chunked_twice;
    int te_chunked_not_last;
    int te_other;           /* codings other than chunked: tollgate relays none */
    int conn_close, conn_keepalive, conn_upgrade;
    int has_upgrade;
    struct h1_str upgrade;  /* the (first) Upgrade field's value */
    int expect_continue;
    size_t n_conn_tokens;   /* other names listed in Connection fields */
    int conn_tokens_over;
    /* Not cleared: only conn_tokens[0..n_conn_tokens) is ever read. */
    struct h1_str conn_tokens[H1_MAX_CONN_TOKENS];
};

static void fields_content_length(struct h1_fields *f, struct h1_str v)
{
    /* RFC 9112 §6.3 (5): a list of identical values ("5, 5", or repeated
     * fields) may be taken as one value; anything else is an error. */
    const char *pos = v.p, *end = v.p + v.len;
    struct h1_str el;
    while (list_next(&pos, end, &el)) {
        int64_t n = h1_parse_content_length(el);
        if (n < 0 || (f->has_cl && n != f->cl)) {
            f->cl_bad = 1;
            return;
        }
        if (f->has_cl)
            f->cl_list = 1;
        f->has_cl = 1;
        f->cl = n;
    }
}

static void fields_transfer_encoding(struct h1_fields *f, struct h1_str v)
{
    /* Codings apply in listed order across all Transfer-Encoding fields
     * (RFC 9112 §6.1); only the final one decides the framing. */
    const char *pos = v.p, *end = v.p + v.len;
    struct h1_str el;
    f->has_te = 1;
    while (list_next(&pos, end, &el)) {
        if (el.len == 0)
            continue;
        f->te_codings++;
        if (IEQ(el, "chunked")) {
            if (f->te_last_chunked || f->te_chunked_not_last)
                f->te_chunked_twice = 1;
            f->te_last_chunked = 1;
            continue;
        }
        if (f->te_last_chunked)
            f->te_chunked_not_last = 1;
        f->te_last_chunked = 0;
        f->te_other = 1;
    }
}

static void fields_connection(struct h1_fields *f, struct h1_str v)
{
    const char *pos = v.p, *end = v.p + v.len;
    struct h1_str el;
    while (list_next(&pos, end, &el)) {
        /* Keep-Alive and Upgrade fields are hop-by-hop by name; any other
         * name listed (a field called "Close" too) is looked for. */
        if (IEQ(el, "keep-alive")) {
            f->conn_keepalive = 1;
            continue;
        }
        if (IEQ(el, "upgrade")) {
            f->conn_upgrade = 1;
            continue;
        }
        if (IEQ(el, "close"))
            f->conn_close = 1;
        if (el.len > 0 && f->n_conn_tokens < H1_MAX_CONN_TOKENS)
            f->conn_tokens[f->n_conn_tokens++] = el;
        else if (el.len > 0)
            f->conn_tokens_over = 1;
    }
}

/* Notes what a field says about framing and the connection, and returns its
 * kind (H1_H_*) as far as its name tells. */
static unsigned fields_note(struct h1_fields *f, struct h1_str name, struct h1_str value)
{
    switch (name.len) {
    case 2:
        if (IEQ(name, "te"))
            return H1_H_HOP;
        break;
    case 4:
        if (IEQ(name, "host")) {
            f->host_count++;
            f->host = value;
            return H1_H_HOST;
        }
        if (IEQ(name, "date"))
            f->has_date = 1;
        break;
    case 6:
        if (IEQ(name, "expect") && IEQ(value, "100-continue"))
            f->expect_continue = 1;
        break;
    case 7:
        if (IEQ(name, "upgrade")) {
            if (!f->has_upgrade)
                f->upgrade = value;
            f->has_upgrade = 1;
            return H1_H_HOP | H1_H_UPGRADE;
        }
        if (IEQ(name, "trailer"))
            return H1_H_HOP;
        break;
    case 9:
        if (IEQ(name, "forwarded"))
            return H1_H_FORWARDED;
        break;
    case 10:
        if (IEQ(name, "connection")) {
            fields_connection(f, value);
            return H1_H_HOP;
        }
        if (IEQ(name, "keep-alive"))
            return H1_H_HOP;
        break;
    case 14:
        if (IEQ(name, "content-length")) {
            fields_content_length(f, value);
            return H1_H_LENGTH;
        }
        break;
    case 15:
        if (IEQ(name, "x-forwarded-for"))
            return H1_H_FORWARDED;
        break;
    case 16:
        if (IEQ(name, "proxy-connection"))
            return H1_H_HOP;
        if (IEQ(name, "x-forwarded-host"))
            return H1_H_FORWARDED;
        break;
    case 17:
        if (IEQ(name, "transfer-encoding")) {
            fields_transfer_encoding(f, value);
            return H1_H_HOP;
        }
        if (IEQ(name, "x-forwarded-proto"))
            return H1_H_FORWARDED;
        break;
    case 18:
        if (IEQ(name, "proxy-authenticate"))
            return H1_H_HOP;
        break;
    case 19:
        if (IEQ(name, "proxy-authorization"))
            return H1_H_HOP;
        break;
    }
    return 0;
}

/*
 * H1_H_ALIAS for a name with '_' that reads, '_' taken for '-', as a field
 * the proxy controls or removes: CGI-style backends (PHP, WSGI, Rack) see
 * X_Forwarded_For and X-Forwarded-For both as HTTP_X_FORWARDED_FOR and join
 * them, so a client's twin would stand beside the proxy's own value.
 */
static unsigned alias_kind(struct h1_str name)
{
    static const char *const controlled[] = {
        "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "content-length",
        "transfer-encoding", "keep-alive", "proxy-connection", "proxy-authorization",
        "proxy-authenticate",
    };
    char norm[24];
    if (name.len >= sizeof(norm) || memchr(name.p, '_', name.len) == NULL)
        return 0;
    for (size_t i = 0; i < name.len; i++)
        norm[i] = name.p[i] == '_' ? '-' : (char)lower((unsigned char)name.p[i]);
    for (size_t i = 0; i < sizeof(controlled) / sizeof(controlled[0]); i++)
        if (strlen(controlled[i]) == name.len && memcmp(norm, controlled[i], name.len) == 0)
            return H1_H_ALIAS;
    return 0;
}

/* Marks the fields a Connection field lists as hop-by-hop (RFC 9110
 * §7.6.1); the list may come before or after them.  Content-Length and Host
 * are never dropped so: the message crosses with the framing the proxy
 * reads it by (a listed Content-Length would let a request body reach the
 * backend as further requests), and with its Host. */
static void fields_mark_listed(const struct h1_fields *f, struct h1_header *hs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (hs[i].kind & (H1_H_HOP | H1_H_LENGTH | H1_H_HOST))
            continue;
        for (size_t t = 0; t < f->n_conn_tokens; t++) {
            const struct h1_str *tok = &f->conn_tokens[t];
            size_t k = 0;
            if (tok->len != hs[i].name.len)
                continue;
            while (k < tok->len && lower((unsigned char)tok->p[k]) == lower((unsigned char)hs[i].name.p[k]))
                k++;
            if (k == tok->len) {
                hs[i].kind |= H1_H_HOP;
                break;
            }
        }
    }
}

/*
 * Parses field lines from p up to and including the empty line.  Fills
 * hs[0..*n) and f.  Returns 0, -400 for a syntax error or -431 for more than
 * H1_MAX_HEADERS fields.
 */
static int parse_fields(const char *p, const char *end, struct h1_header *hs,
                        size_t *n_out, struct h1_fields *f)
{
    size_t n = 0;
    memset(f, 0, offsetof(struct h1_fields, conn_tokens));
    *n_out = 0;
    for (;;) {
        if (p >= end)
            return -400;                        /* no empty line */
        if (*p == '\r') {
            if (end - p >= 2 && p[1] == '\n')
                break;
            return -400;
        }
        /* A line starting with whitespace is obs-fold (§5.2), or, right
         * after the start line, a smuggling vector (§2.2): reject both. */
        if (CLS(*p, C_OWS))
            return -400;
        const char *name = p;
        p = skip_token(p, end);
        /* No whitespace between name and colon (§5.1); name is a token. */
        if (p == name || p >= end || *p != ':')
            return -400;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && CLS(*p, C_OWS))
            p++;
        const char *val = p;
        p = skip_field(p, end);
        /* The value stops at the first byte that is not HTAB/SP/VCHAR/
         * obs-text; it must be the CRLF (NUL, bare CR, LF, CTLs: §5.5). */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return -400;
        const char *vend = p;
        while (vend > val && CLS(vend[-1], C_OWS))
            vend--;
        p += 2;
        if (n == H1_MAX_HEADERS)
            return -431;
        hs[n].name.p = name;
        hs[n].name.len = name_len;
        hs[n].value.p = val;
        hs[n].value.len = (size_t)(vend - val);
        hs[n].kind = fields_note(f, hs[n].name, hs[n].value);
        if (hs[n].kind == 0)
            hs[n].kind = alias_kind(hs[n].name);
        n++;
        *n_out = n;
    }
    if (f->conn_tokens_over)
        return -400;
    if (f->n_conn_tokens > 0)
        fields_mark_listed(f, hs, n);
    return 0;
}

/* "HTTP/" DIGIT "." DIGIT at p (8 bytes available): 1 when well formed. */
static inline int version_syntax(const char *p)
{
    return memcmp(p, "HTTP/", 5) == 0 && p[5] >= '0' && p[5] <= '9' &&
           p[6] == '.' && p[7] >= '0' && p[7] <= '9';
}

/* ------------------------------------------------------------------ */
/* Requests                                                             */

int h1_parse_request(const char *head, size_t len, struct h1_request *req)
{
    static const char slash[] = "/";
    const char *p = head, *end = head + len;

    req->method.p = req->target.p = req->path.p = req->host.p = NULL;
    req->method.len = req->target.len = req->path.len = req->host.len = 0;
    req->upgrade.p = NULL;
    req->upgrade.len = 0;
    req->minor = 1;
    req->content_length = -1;
    req->flags = 0;
    req->n_headers = 0;

    while (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
        p += 2;                                 /* §2.2 leading empty lines */

    /* request-line = method SP request-target SP HTTP-version CRLF (§3) */
    const char *m = p;
    p = skip_token(p, end);
    if (p == m || p >= end || *p != ' ')
        return -400;
    req->method.p = m;
    req->method.len = (size_t)(p - m);
    p++;
    const char *t = p;
    p = skip_target(p, end);
    if (p == t || p >= end || *p != ' ')
        return -400;
    req->target.p = t;
    req->target.len = (size_t)(p - t);
    p++;
    if (end - p < 10 || !version_syntax(p) || p[8] != '\r' || p[9] != '\n')
        return -400;
    /* A later 1.x is read as 1.1, the highest minor version tollgate
     * speaks (RFC 9110 §2.5), as nginx and HAProxy do; 2.0 and 0.9 are
     * other protocols. */
    if (p[5] != '1')
        return -505;
    req->minor = p[7] == '0' ? 0 : 1;
    p += 10;

    /* tollgate is a reverse proxy, not a forward proxy: no tunnels. */
    if (req->method.len == 7 && memcmp(req->method.p, "CONNECT", 7) == 0)
        return -501;

    /* Target forms (§3.2): origin, absolute (http/https), asterisk. */
    struct h1_str authority = { NULL, 0 };
    const char *tend = t + req->target.len;
    if (t[0] == '/') {
        const char *q = memchr(t, '?', req->target.len);
        req->path.p = t;
        req->path.len = (size_t)((q ? q : tend) - t);
    } else if (req->target.len == 1 && t[0] == '*') {
        if (!(req->method.len == 7 && memcmp(req->method.p, "OPTIONS", 7) == 0))
            return -400;
        req->path = req->target;
    } else {
        size_t skip;
        if (req->target.len > 7 && ieq_n(t, 7, "http://", 7))
            skip = 7;
        else if (req->target.len > 8 && ieq_n(t, 8, "https://", 8))
            skip = 8;
        else
            return -400;
        const char *a = t + skip, *ae = a;
        while (ae < tend && *ae != '/' && *ae != '?')
            ae++;
        /* An empty authority is invalid for http(s) and userinfo is
         * deprecated (RFC 9110 §4.2.1, §4.2.4). */
        if (ae == a || memchr(a, '@', (size_t)(ae - a)) != NULL)
            return -400;
        authority.p = a;
        authority.len = (size_t)(ae - a);
        if (ae < tend && *ae == '/') {
            const char *q = memchr(ae, '?', (size_t)(tend - ae));
            req->path.p = ae;
            req->path.len = (size_t)((q ? q : tend) - ae);
        } else {
            req->path.p = slash;                /* "http://h" or "http://h?q" */
            req->path.len = 1;
        }
    }

    struct h1_fields f;
    int rc = parse_fields(p, end, req->headers, &req->n_headers, &f);
    if (rc < 0)
        return rc;

    /* Host (§3.2): exactly one in HTTP/1.1, never two; with absolute-form
     * the target's authority wins (§3.2.2). */
    if (f.host_count > 1 || (req->minor == 1 && f.host_count == 0))
        return -400;
    if (f.host_count == 1 && f.host.len == 0 && authority.len == 0)
        return -400;
    req->host = authority.len ? authority : f.host;

    /* Framing (§6.1, §6.3). */
    if (f.cl_bad)
        return -400;
    if (f.has_te) {
        if (f.has_cl || req->minor == 0)
            return -400;                        /* faulty framing */
        if (f.te_codings == 0 || !f.te_last_chunked || f.te_chunked_twice ||
            f.te_chunked_not_last)
            return -400;                        /* chunked not final: MUST 400 */
        /* Any other coding (gzip before chunked...): the body is relayed
         * de-framed of nothing but chunked, so a backend told "chunked"
         * only would take compressed bytes for the content.  501, as nginx. */
        if (f.te_other)
            return -501;
        req->flags |= H1_F_CHUNKED;
    } else if (f.has_cl) {
        req->content_length = f.cl;
        req->flags |= H1_F_HAS_CL | (f.cl_list ? H1_F_CL_LIST : 0);
    }

    if (f.conn_close)
        req->flags |= H1_F_CONN_CLOSE;
    if (f.conn_keepalive)
        req->flags |= H1_F_CONN_KEEPALIVE;
    /* Upgrade and 100-continue are HTTP/1.1 features; HTTP/1.0 requests
     * carrying them are treated as if they did not (RFC 9110 §7.8, §10.1.1). */
    if (f.has_upgrade)
        req->upgrade = f.upgrade;
    if (req->minor == 1) {
        /* h2c is not offered: the HTTP/1.1 upgrade to cleartext HTTP/2 is
         * deprecated (RFC 9113 §3.1), and a backend that accepted it would
         * take the client's connection past routing's path rules and the
         * forwarding headers (h2c smuggling).  The request goes on as a
         * plain one, Upgrade removed, as a server without h2c answers it. */
        static const char h2c[] = "h2c";
        struct h1_str h = { h2c, 3 };
        if (f.conn_upgrade && f.has_upgrade && !h1_upgrade_matches(f.upgrade, h))
            req->flags |= H1_F_UPGRADE;
        if (f.expect_continue)
            req->flags |= H1_F_EXPECT_CONTINUE;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Responses                                                            */

int h1_parse_response(const char *head, size_t len, struct h1_response *resp)
{
    const char *p = head, *end = head + len;

    resp->status = 0;
    resp->reason.p = NULL;
    resp->reason.len = 0;
    resp->minor = 1;
    resp->content_length = -1;
    resp->upgrade.p = NULL;
    resp->upgrade.len = 0;
    resp->flags = 0;
    resp->n_headers = 0;

    /* status-line = HTTP-version SP status-code SP [reason-phrase] CRLF
     * (§4).  A missing SP before an empty reason is tolerated. */
    if (end - p < 14 || !version_syntax(p) || p[5] != '1' || p[8] != ' ')
        return -502;
    resp->minor = p[7] == '0' ? 0 : 1;   /* a later 1.x as 1.1 (RFC 9110 §2.5) */
    p += 9;
    if (p[0] < '1' || p[0] > '9' || p[1] < '0' || p[1] > '9' ||
        p[2] < '0' || p[2] > '9')
        return -502;
    resp->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    if (*p == ' ') {
        p++;
        const char *r = p;
        p = skip_field(p, end);
        resp->reason.p = r;
        resp->reason.len = (size_t)(p - r);
    } else {
        resp->reason.p = p;
    }
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        return -502;
    p += 2;

    struct h1_fields f;
    if (parse_fields(p, end, resp->headers, &resp->n_headers, &f) < 0)
        return -502;
    if (f.cl_bad)
        return -502;
    if (f.has_te) {
        /* CL with TE may be an attempt at response splitting (§6.1); TE in
         * an HTTP/1.0 message means faulty framing (§6.1). */
        if (f.has_cl || resp->minor == 0)
            return -502;
        /* Only "chunked", as nginx: tollgate writes its own framing fields,
         * so another coding would reach the client unannounced (§6.1). */
        if (f.te_other || !f.te_last_chunked || f.te_chunked_twice)
            return -502;
        resp->flags |= H1_F_CHUNKED;
    } else if (f.has_cl) {
        /* Also parsed for 1xx/204/304, where the caller ignores it. */
        resp->content_length = f.cl;
        resp->flags |= H1_F_HAS_CL | (f.cl_list ? H1_F_CL_LIST : 0);
    }
    if (f.has_date)
        resp->flags |= H1_F_HAS_DATE;
    if (f.conn_close)
        resp->flags |= H1_F_CONN_CLOSE;
    if (f.conn_keepalive)
        resp->flags |= H1_F_CONN_KEEPALIVE;
    if (f.has_upgrade)
        resp->upgrade = f.upgrade;
    if (resp->status == 101 && f.conn_upgrade && f.has_upgrade)
        resp->flags |= H1_F_UPGRADE;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Chunked bodies (RFC 9112 §7.1)                                       */

enum {
    CS_SIZE,            /* chunk-size hex digits */
    CS_SIZE_WS,         /* BWS after the size, before ';' or CR */
    CS_EXT,             /* chunk extensions up to CR (lenient: a backend's) */
    /* strict chunk-ext (RFC 9112 §7.1.1): *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
    CS_X_NAME0,         /* after ';': BWS, then the name's first byte */
    CS_X_NAME,          /* inside chunk-ext-name (token) */
    CS_X_AFTER_NAME,    /* BWS after the name: '=' or ';' must follow */
    CS_X_VAL0,          /* after '=': BWS, then a token or a quoted-string */
    CS_X_TOKEN,         /* inside a token value */
    CS_X_QS,            /* inside a quoted-string */
    CS_X_QP,            /* after '\\' in a quoted-string */
    CS_X_AFTER_VAL,     /* BWS after a value: ';' must follow */
    CS_X_AFTER_QS,      /* right after the closing '"' */
    CS_SIZE_LF,         /* LF ending the size line */
    CS_DATA,            /* chunk-data */
    CS_DATA_CR,         /* CRLF after chunk-data */
    CS_DATA_LF,
    CS_TRAILER_START,   /* start of a trailer line, or the final CRLF */
    CS_TRAILER,         /* inside a trailer field line */
    CS_TRAILER_LF,
    CS_END_LF,          /* LF of the final empty line */
    CS_DONE,
};

void h1_chunked_init(struct h1_chunked *c)
{
    c->state = CS_SIZE;
    c->remaining = 0;
    c->line_len = 0;
    c->saw_digit = 0;
    c->trailer = 0;
    c->strict = 0;
}

void h1_chunked_init_strict(struct h1_chunked *c)
{
    h1_chunked_init(c);
    c->strict = 1;
}

/* One byte of a strict chunk-ext; returns the next state, or -1. */
static int chunk_ext_step(int state, unsigned char ch)
{
    int ows = ch == ' ' || ch == '\t';
    switch (state) {
    case CS_X_NAME0:
        return ows ? CS_X_NAME0 : CLS(ch, C_TCHAR) ? CS_X_NAME : -1;
    case CS_X_NAME:
    case CS_X_TOKEN:
        if (CLS(ch, C_TCHAR))
            return state;
        if (ch == ';')
            return CS_X_NAME0;
        if (ch == '\r')
            return CS_SIZE_LF;
        if (ch == '=' && state == CS_X_NAME)
            return CS_X_VAL0;
        return ows ? (state == CS_X_NAME ? CS_X_AFTER_NAME : CS_X_AFTER_VAL) : -1;
    case CS_X_AFTER_NAME:
        return ows ? state : ch == '=' ? CS_X_VAL0 : ch == ';' ? CS_X_NAME0 : -1;
    case CS_X_VAL0:
        return ows ? state : ch == '"' ? CS_X_QS : CLS(ch, C_TCHAR) ? CS_X_TOKEN : -1;
    case CS_X_QS:
        /* qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
        if (ch == '"')
            return CS_X_AFTER_QS;
        if (ch == '\\')
            return CS_X_QP;
        return CLS(ch, C_FIELD) ? state : -1;
    case CS_X_QP:
        return CLS(ch, C_FIELD) ? CS_X_QS : -1;
    case CS_X_AFTER_QS:
        if (ch == '\r')
            return CS_SIZE_LF;
        return ch == ';' ? CS_X_NAME0 : ows ? CS_X_AFTER_VAL : -1;
    case CS_X_AFTER_VAL:
        return ows ? state : ch == ';' ? CS_X_NAME0 : -1;
    default:
        return -1;
    }
}

ssize_t h1_chunked_feed(struct h1_chunked *c, const char *buf, size_t len, int *done)
{
    size_t i = 0;
    *done = 0;
    if (c->state == CS_DONE) {
        *done = 1;
        return 0;
    }
    while (i < len) {
        unsigned char ch = (unsigned char)buf[i];
        switch (c->state) {
        case CS_DATA: {
            /* Bulk: a large chunk costs one subtraction per call. */
            size_t avail = len - i;
            size_t take = c->remaining < avail ? (size_t)c->remaining : avail;
            i += take;
            c->remaining -= take;
            if (c->remaining == 0)
                c->state = CS_DATA_CR;
            continue;
        }
        case CS_TRAILER_START:
        case CS_TRAILER:
        case CS_TRAILER_LF:
        case CS_END_LF:
            if (++c->trailer > H1_TRAILER_MAX)
                return -400;
            break;
        default:
            break;
        }
        switch (c->state) {
        case CS_SIZE:
            if (CLS(ch, C_HEX)) {
                if (c->remaining >> 59)
                    return -400;                /* would reach 2^63 */
                c->remaining = (c->remaining << 4) | hexval(ch);
                if (++c->saw_digit > H1_CHUNK_SIZE_DIGITS)
                    return -400;
            } else if (!c->saw_digit) {
                return -400;
            } else if (ch == '\r') {
                c->state = CS_SIZE_LF;
                break;
            } else if (ch == ';') {
                c->state = c->strict ? CS_X_NAME0 : CS_EXT;
            } else if (ch == ' ' || ch == '\t') {
                c->state = CS_SIZE_WS;
            } else {
                return -400;
            }
            if (++c->line_len > H1_CHUNK_LINE_MAX)
                return -400;
            break;
        case CS_SIZE_WS:
            if (ch == '\r' && !c->strict) {
                c->state = CS_SIZE_LF;   /* "5 \r\n": padding some servers write */
                break;
            }
            if (ch == ';')
                c->state = c->strict ? CS_X_NAME0 : CS_EXT;
            else if (ch != ' ' && ch != '\t')
                return -400;
            if (++c->line_len > H1_CHUNK_LINE_MAX)
                return -400;
            break;
        case CS_X_NAME0:
        case CS_X_NAME:
        case CS_X_AFTER_NAME:
        case CS_X_VAL0:
        case CS_X_TOKEN:
        case CS_X_QS:
        case CS_X_QP:
        case CS_X_AFTER_VAL:
        case CS_X_AFTER_QS: {
            int next = chunk_ext_step(c->state, ch);
            if (next < 0 || ++c->line_len > H1_CHUNK_LINE_MAX)
                return -400;
            c->state = next;
            break;
        }
        case CS_EXT: {
            /* chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ):
             * only checked for bytes legal in a field value; tight loop. */
            size_t j = i;
            while (j < len && CLS(buf[j], C_FIELD))
                j++;
            c->line_len += (unsigned)(j - i > H1_CHUNK_LINE_MAX + 1 ?
                                      H1_CHUNK_LINE_MAX + 1 : j - i);
            if (c->line_len > H1_CHUNK_LINE_MAX)
                return -400;
            i = j;
            if (j == len)
                continue;
            if (buf[j] != '\r')
                return -400;
            c->state = CS_SIZE_LF;
            break;
        }
        case CS_SIZE_LF:
            if (ch != '\n')
                return -400;
            c->line_len = 0;
            c->saw_digit = 0;
            c->state = c->remaining ? CS_DATA : CS_TRAILER_START;
            break;
        case CS_DATA_CR:
            if (ch != '\r')
                return -400;                    /* data longer than size */
            c->state = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n')
                return -400;
            c->state = CS_SIZE;
            break;
        case CS_TRAILER_START:
            if (ch == '\r') {
                c->state = CS_END_LF;
            } else if (CLS(ch, C_TCHAR)) {
                c->state = CS_TRAILER;
                c->line_len = 1;
                c->saw_digit = 0;               /* here: colon seen */
            } else {
                return -400;                    /* obs-fold, junk */
            }
            break;
        case CS_TRAILER:
            if (ch == '\r') {
                if (!c->saw_digit)
                    return -400;
                c->state = CS_TRAILER_LF;
                break;
            }
            if (c->saw_digit) {
                if (!CLS(ch, C_FIELD))
                    return -400;
            } else if (ch == ':') {
                c->saw_digit = 1;
            } else if (!CLS(ch, C_TCHAR)) {
                return -400;
            }
            if (++c->line_len > H1_CHUNK_LINE_MAX)
                return -400;
            break;
        case CS_TRAILER_LF:
            if (ch != '\n')
                return -400;
            c->line_len = 0;
            c->state = CS_TRAILER_START;
            break;
        case CS_END_LF:
            if (ch != '\n')
                return -400;
            c->state = CS_DONE;
            *done = 1;
            return (ssize_t)(i + 1);
        default:
            return -400;
        }
        i++;
    }
    return (ssize_t)i;
}

size_t h1_chunked_data_left(const struct h1_chunked *c)
{
    return c->state == CS_DATA ? (size_t)c->remaining : 0;
}
