/*
 * host: the Host header normaliser and the "host:port" parser used for
 * backend addresses.  Pure functions: no allocation, no global state, safe
 * from any thread; the hot path calls host_normalise() once per request.
 *
 * A normalised host is lowercase, has no port and no trailing dot, and is
 * either a DNS-style name (labels of [a-z0-9_-], 1..63 bytes each, at most
 * 253 bytes in all), a dotted IPv4 address, or a bracketed IPv6 literal
 * ("[::1]") as RFC 3986 §3.2.2 writes it.  That is the form the Redis keys
 * use (tg:domain:<host>), see ../shared/CONTRACT.md.
 */
#ifndef TG_HOST_H
#define TG_HOST_H

#include <stddef.h>

/* Longest normalised host, without the terminating NUL (RFC 1035 §2.3.4 names; [v6] fits too). */
#define HOST_MAX 253

/*
 * Normalises the raw value of a Host header (RFC 9110 §7.2: uri-host
 * [ ":" port ]) into out (at least HOST_MAX + 1 bytes), NUL-terminated.
 * Accepts "name", "name:port", "name.", "[v6]" and "[v6]:port"; surrounding
 * spaces or tabs are ignored.  Rejects empty hosts, empty labels, labels over
 * 63 bytes, bytes outside [A-Za-z0-9._-], a port that is not 1..5 digits of
 * value <= 65535, and malformed IPv6 literals; an IPv6 literal is written
 * in RFC 5952's form ([2001:db8::1]).
 * Returns the normalised length (>= 1), or -1 when the host is invalid.
 */
int host_normalise(const char *in, size_t len, char *out);

/*
 * Returns the wildcard zone of a normalised host: the part after its first
 * label ("a.b.example.com" -> "b.example.com", "example.com" -> "com"), with
 * its length in *zone_len; NULL for single-label hosts and IP literals.
 * The pointer is into host.
 */
const char *host_zone(const char *host, size_t len, size_t *zone_len);

/* 1 when the normalised host is an IPv4 or bracketed IPv6 literal. */
int host_is_ip_literal(const char *host, size_t len);

/*
 * Parses a backend address "host:port" or "[v6]:port" (len bytes, no NUL
 * needed) into name (NUL-terminated, brackets removed, lowercased; namecap
 * bytes) and *port (1..65535).  Returns 0 / -1 (missing or bad port, empty
 * or invalid name, name too long).
 */
int host_parse_hostport(const char *s, size_t len, char *name, size_t namecap, int *port);

#endif
