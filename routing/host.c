/*
 * host: Host header normalisation and "host:port" parsing.  See host.h for
 * the accepted forms.  Everything here works on (pointer, length) input that
 * comes straight from a client or from Redis, so every index is checked
 * against len and nothing is allocated.
 */
#include "routing/host.h"

#include <arpa/inet.h>
#include <string.h>

/* Bytes allowed in a name label: letters, digits, '-' and '_' (seen in real hostnames). */
static int host_label_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static unsigned char host_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/*
 * Parses an optional ":port" suffix at s[0..len): len == 0 means no port.
 * RFC 9110 §7.2 allows an empty port after the colon ("host:"), so do we.
 * Returns 0 / -1.
 */
static int host_check_port(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    if (s[0] != ':')
        return -1;
    if (len == 1)
        return 0;
    if (len - 1 > 5)
        return -1;
    unsigned v = 0;
    for (size_t i = 1; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= 65535 ? 0 : -1;
}

/* Validates a bracketed IPv6 literal body (between '[' and ']'); 0 / -1. */
static int host_check_v6(const char *s, size_t len, struct in6_addr *a)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == ':' || c == '.'))
            return -1;   /* zone ids (RFC 6874) and IPvFuture are not accepted */
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    return inet_pton(AF_INET6, buf, a) == 1 ? 0 : -1;
}

/*
 * Validates and lowercases a name (no port) of n bytes into out; strips one
 * trailing dot.  Returns the output length or -1.
 */
static int host_copy_name(const char *s, size_t n, char *out)
{
    if (n > 0 && s[n - 1] == '.')
        n--;                       /* "example.com." is the same host (RFC 1034 §3.1) */
    if (n == 0 || n > HOST_MAX)
        return -1;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0)
                return -1;         /* empty label: leading dot or ".." */
            label = 0;
        } else if (host_label_byte(c)) {
            if (++label > 63)
                return -1;
        } else {
            return -1;
        }
        out[i] = (char)host_lower(c);
    }
    if (label == 0)
        return -1;                 /* "name.." : empty last label */
    out[n] = '\0';
    return (int)n;
}

int host_normalise(const char *in, size_t len, char *out)
{
    if (in == NULL || out == NULL)
        return -1;
    /* Header values may carry optional whitespace around them (RFC 9110 §5.5). */
    while (len > 0 && (in[0] == ' ' || in[0] == '\t')) {
        in++;
        len--;
    }
    while (len > 0 && (in[len - 1] == ' ' || in[len - 1] == '\t'))
        len--;
    if (len == 0)
        return -1;

    if (in[0] == '[') {
        const char *close = memchr(in, ']', len);
        if (close == NULL)
            return -1;
        size_t body = (size_t)(close - in) - 1;
        size_t rest = len - body - 2;
        struct in6_addr a;
        if (host_check_v6(in + 1, body, &a) < 0 || host_check_port(close + 1, rest) < 0)
            return -1;
        /* One spelling per address: RFC 5952's, which inet_ntop writes and
         * browsers send ([2001:db8::1], never [2001:DB8:0:0::1]), so that
         * a route written either way matches. */
        char text[INET6_ADDRSTRLEN];
        if (inet_ntop(AF_INET6, &a, text, sizeof(text)) == NULL)
            return -1;
        size_t tl = strlen(text);
        if (tl + 2 > HOST_MAX)
            return -1;
        out[0] = '[';
        memcpy(out + 1, text, tl);
        out[tl + 1] = ']';
        out[tl + 2] = '\0';
        return (int)(tl + 2);
    }

    const char *colon = memchr(in, ':', len);
    size_t n = colon ? (size_t)(colon - in) : len;
    if (colon && host_check_port(colon, len - n) < 0)
        return -1;
    return host_copy_name(in, n, out);
}

const char *host_zone(const char *host, size_t len, size_t *zone_len)
{
    if (host == NULL || len == 0 || host_is_ip_literal(host, len))
        return NULL;
    const char *dot = memchr(host, '.', len);
    if (dot == NULL || (size_t)(dot - host) + 1 >= len)
        return NULL;
    if (zone_len)
        *zone_len = len - (size_t)(dot - host) - 1;
    return dot + 1;
}

int host_is_ip_literal(const char *host, size_t len)
{
    if (len > 0 && host[0] == '[')
        return 1;
    if (len == 0 || len > 15)
        return 0;
    char buf[16];
    struct in_addr a;
    memcpy(buf, host, len);
    buf[len] = '\0';
    return inet_pton(AF_INET, buf, &a) == 1;
}

int host_parse_hostport(const char *s, size_t len, char *name, size_t namecap, int *port)
{
    if (s == NULL || name == NULL || namecap == 0 || len == 0)
        return -1;
    const char *h;
    size_t hn;
    const char *p;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return -1;
        h = s + 1;
        hn = (size_t)(close - h);
        struct in6_addr a;
        if (host_check_v6(h, hn, &a) < 0)
            return -1;
        p = close + 1;
    } else {
        /* The port follows the last colon; a name holds no colon. */
        const char *colon = memchr(s, ':', len);
        if (colon == NULL)
            return -1;
        h = s;
        hn = (size_t)(colon - s);
        p = colon;
        if (hn == 0)
            return -1;
        for (size_t i = 0; i < hn; i++) {
            unsigned char c = (unsigned char)h[i];
            if (!host_label_byte(c) && c != '.')
                return -1;
        }
    }
    size_t plen = len - (size_t)(p - s);
    if (plen < 2 || p[0] != ':' || plen - 1 > 5)
        return -1;
    int v = 0;
    for (size_t i = 1; i < plen; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    if (v < 1 || v > 65535 || hn + 1 > namecap)
        return -1;
    for (size_t i = 0; i < hn; i++)
        name[i] = (char)host_lower((unsigned char)h[i]);
    name[hn] = '\0';
    *port = v;
    return 0;
}
