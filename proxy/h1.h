/*
 * h1: the HTTP/1.x codec.  Pure functions over byte arrays: no I/O, no
 * allocation, no libevent.  The connection code finds a complete head (up to
 * the empty line) in its input buffer, hands it here as one contiguous array,
 * and gets back views (pointer+length) into that array.  Bodies are forwarded
 * with their framing untouched; h1_chunked_* only tracks where a chunked body
 * ends and rejects invalid framing (RFC 9112 §7.1).
 *
 * Return convention: see each function.  Errors are negative HTTP status
 * codes (-400, -431, -501, -505) so that the caller can answer directly.
 */
#ifndef TG_H1_H
#define TG_H1_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define H1_MAX_HEADERS 128

struct h1_str {
    const char *p;
    size_t len;
};

struct h1_header {
    struct h1_str name;
    struct h1_str value;   /* leading/trailing OWS stripped */
    unsigned kind;         /* H1_H_*: what the field is to a proxy */
};

/* Header kinds, set by the parsers (bits of h1_header.kind). */
enum {
    H1_H_HOP       = 1 << 0,  /* hop-by-hop (RFC 9110 §7.6.1): Connection, Keep-Alive,
                                 Proxy-Connection, TE, Trailer, Transfer-Encoding,
                                 Upgrade, Proxy-Authenticate, Proxy-Authorization, or a
                                 name listed in any Connection field of the message
                                 other than Content-Length and Host */
    H1_H_FORWARDED = 1 << 1,  /* X-Forwarded-For, -Proto, -Host, Forwarded */
    H1_H_HOST      = 1 << 2,  /* Host (never hop-by-hop, even when listed) */
    H1_H_UPGRADE   = 1 << 3,  /* Upgrade */
    H1_H_LENGTH    = 1 << 4,  /* Content-Length (never hop-by-hop, even when listed) */
    H1_H_ALIAS     = 1 << 5,  /* '_' for '-' makes it one of the X-Forwarded-* or
                                 hop-by-hop or framing fields (X_Forwarded_For) */
};

/* Most names a message's Connection fields may list besides keep-alive
 * and upgrade; more makes the message invalid (400 / 502). */
#define H1_MAX_CONN_TOKENS 16

/* Framing/semantics flags derived from the head. */
enum {
    H1_F_CHUNKED        = 1 << 0,  /* Transfer-Encoding: chunked (final coding) */
    H1_F_CONN_CLOSE     = 1 << 1,  /* Connection: close */
    H1_F_CONN_KEEPALIVE = 1 << 2,  /* Connection: keep-alive */
    H1_F_UPGRADE        = 1 << 3,  /* Connection: upgrade + Upgrade header present */
    H1_F_EXPECT_CONTINUE= 1 << 4,  /* Expect: 100-continue */
    H1_F_HAS_CL         = 1 << 5,  /* Content-Length present (content_length valid) */
    H1_F_CL_LIST        = 1 << 6,  /* ... as a list of equal values or repeated fields: forward one */
    H1_F_HAS_DATE       = 1 << 7,  /* Date present (a response without one gets the proxy's) */
};

struct h1_request {
    struct h1_str method;
    struct h1_str target;          /* request-target as sent */
    struct h1_str path;            /* target without query: "/a/b" (origin-form) or from absolute-form */
    int minor;                     /* 0 or 1 (HTTP/1.0 or HTTP/1.1) */
    struct h1_str host;            /* Host header value (or authority of absolute-form); len 0 if absent */
    struct h1_str upgrade;         /* the Upgrade field's value; len 0 if absent */
    int64_t content_length;        /* -1 when absent */
    unsigned flags;                /* H1_F_* */
    size_t n_headers;
    struct h1_header headers[H1_MAX_HEADERS];
};

struct h1_response {
    int status;                    /* 100..999 */
    struct h1_str reason;
    int minor;
    int64_t content_length;        /* -1 when absent */
    unsigned flags;                /* H1_F_* (UPGRADE set on 101 with Upgrade) */
    struct h1_str upgrade;         /* the Upgrade field's value; len 0 if absent */
    size_t n_headers;
    struct h1_header headers[H1_MAX_HEADERS];
};

/*
 * Finds the end of a head in buf[0..len).  *scanned is where a previous call
 * stopped (start with 0) so that a head arriving byte by byte is scanned
 * once, not quadratically.  Returns the head length including the final
 * CRLF CRLF (> 0), 0 when more bytes are needed, -431 when no end is found
 * within max bytes, -400 for a bare LF or other line-ending violation found
 * during the scan.  Leading empty lines before a request line (RFC 9112 §2.2)
 * are part of the returned head and skipped by the parser.
 */
ssize_t h1_find_head_end(const char *buf, size_t len, size_t *scanned, size_t max);

/*
 * Parses a complete request head (as returned by h1_find_head_end) into req.
 * Rules (RFC 9112): token methods; request-target without CTL or SP;
 * "HTTP/1.0" or "HTTP/1.1" (other versions -505); header names are tokens
 * with no whitespace before the colon (§5.1); values contain no NUL/CR/LF or
 * other CTL except HTAB (§5.5); obs-fold is rejected (§5.2); Content-Length
 * with Transfer-Encoding is rejected (§6.1); differing or malformed
 * Content-Length is rejected (§6.3); Transfer-Encoding must end in
 * "chunked" (400 otherwise) and name no other coding (501: tollgate relays
 * chunked framing only); HTTP/1.1 without exactly one Host is rejected (§3.2); more
 * than H1_MAX_HEADERS headers gives -431; Connection fields listing more
 * than H1_MAX_CONN_TOKENS other names give -400.  Every header's kind is set.
 * Returns 0 or a negative status.
 */
int h1_parse_request(const char *head, size_t len, struct h1_request *req);

/*
 * Parses a complete response head from a backend.  Same line and field rules;
 * Transfer-Encoding must be "chunked" alone (as nginx).  Returns 0 or -502
 * (a malformed response is the backend's fault).
 */
int h1_parse_response(const char *head, size_t len, struct h1_response *resp);

/* Case-insensitive header name comparison helper: 1 when equal. */
int h1_str_ieq(struct h1_str s, const char *lit);

/* Returns the first header named name (case-insensitive) or NULL. */
const struct h1_header *h1_find_header(const struct h1_header *hs, size_t n, const char *name);


/*
 * Incremental chunked-body tracker.  Feed it the body bytes as they arrive;
 * it reports how many of them belong to this message (chunk-size lines,
 * data, CRLFs, last-chunk and trailer section included) so the caller can
 * forward exactly those bytes untouched.
 */
struct h1_chunked {
    int state;                 /* private */
    uint64_t remaining;        /* private: data bytes left in this chunk */
    unsigned line_len;         /* private: bytes of the current size/trailer line */
    int saw_digit;             /* private: size digits so far; in a trailer line, colon seen */
    uint64_t trailer;          /* bytes of the trailer section consumed so far: what
                                  follows the last-chunk line, final CRLF included */
    int strict;                /* private: see h1_chunked_init_strict() */
};

/* Most hex digits a chunk-size may have, leading zeros included: a size
 * that a backend reading 16 digits (64 bits) would take otherwise is 400. */
#define H1_CHUNK_SIZE_DIGITS 16

void h1_chunked_init(struct h1_chunked *c);

/*
 * The same for a client's body, where framing bytes are forwarded as sent
 * and must mean one thing to every parser behind: chunk extensions must
 * follow RFC 9112 §7.1.1 exactly (";" name [ "=" token / quoted-string ],
 * whitespace only around ";" and "="), and no whitespace may end a size
 * line.  h1_chunked_init() stays lenient there, as nginx and HAProxy are
 * with backends ("5 \r\n" padding, free-form extensions up to the CR).
 */
void h1_chunked_init_strict(struct h1_chunked *c);

/*
 * Consumes up to len bytes of buf.  Returns the number consumed (>= 0);
 * *done is set to 1 when the message ended at that point (the rest of buf
 * belongs to the next message).  Returns -400 for invalid framing: a size
 * that is not hex, overflows 2^63, a missing CRLF after data, a line over
 * 4 KiB (chunk extensions included), a size of more than
 * H1_CHUNK_SIZE_DIGITS digits, a trailer section over 64 KiB.  Data bytes
 * are consumed in bulk so that a large chunk costs O(1).  The trailer
 * section (RFC 9112 §7.1.2) comes last in the bytes consumed; c->trailer
 * counts its bytes, so that a caller can drop it: a relay that does ends
 * the body with the CRLF itself.
 */
ssize_t h1_chunked_feed(struct h1_chunked *c, const char *buf, size_t len, int *done);

/*
 * Data bytes left in the current chunk when the tracker stands inside
 * chunk-data, else 0.  Lets a caller strip the framing (an HTTP/1.0 client
 * gets a chunked response as a close-delimited body): feed the framing a
 * byte at a time and move the data spans in bulk.
 */
size_t h1_chunked_data_left(const struct h1_chunked *c);

/* Parses a decimal Content-Length value; -1 if invalid or > 2^62. */
int64_t h1_parse_content_length(struct h1_str v);

/*
 * Does a 101 response whose Upgrade field is `answered` switch to what the
 * request's Upgrade field `asked` offered (RFC 9110 §7.8: the server names
 * the protocol(s) it switches to, from the client's list)?  Protocols are
 * compared by name, case-insensitively ("websocket" matches "WebSocket/13").
 * 1 / 0; 0 when either list is empty.
 */
int h1_upgrade_matches(struct h1_str asked, struct h1_str answered);

#endif
