/*
 * hosts: the hosts file (hosts(5)) as a lookup table for backend names of
 * Redis routes.  tollgate reads the file itself, instead of through evdns,
 * so that a name the file does not hold is asked of DNS once (evdns's only
 * hosts-aware call, evdns_getaddrinfo(), has already sent its queries when
 * it finds nothing), and so that a name differing only by a trailing dot
 * ("db." for "db") is found -- more lenient than glibc, which finds
 * neither "db." for an entry "db" nor "db" for an entry "db.", where an
 * absolute name and its relative form name the same host.
 *
 * The format, as glibc reads it: a line holds an IPv4 or IPv6 address and
 * one or more names (the canonical name, then aliases), separated by spaces
 * or tabs; '#' starts a comment; a line whose address does not parse, or
 * that has a scoped IPv6 address ("fe80::1%eth0"), is skipped.  Names match
 * without regard to case and to one trailing dot.  A name on several lines
 * has every address of them, in file order (glibc's "multi on", Debian's
 * default).
 *
 * A table is built once and then only read: safe to share read-only.
 */
#ifndef TG_HOSTS_H
#define TG_HOSTS_H

#include <stddef.h>
#include <sys/socket.h>

/* Bytes of a hosts file read at most; lines past it are ignored. */
#define HOSTS_FILE_MAX (64u << 20)

struct hosts;

/* Builds a table from the text of a hosts file; NULL when out of memory. */
struct hosts *hosts_parse(const char *text, size_t len);

/*
 * Reads and parses the file at path.  A missing file, or one that is not a
 * regular file, gives an empty table (no name is in it), as the C library
 * treats it.  NULL (errno set) only when the file exists but cannot be
 * read, or when out of memory.
 */
struct hosts *hosts_load(const char *path);

void hosts_free(struct hosts *h);

/* The number of (name, address) pairs in the table. */
size_t hosts_count(const struct hosts *h);

/*
 * Calls fn with each address of name (len bytes, case and one trailing dot
 * ignored), port 0, in file order, duplicates included.  Returns how many.
 * h may be NULL (an empty table).
 */
typedef void (*hosts_addr_fn)(void *arg, const struct sockaddr *sa, socklen_t len);
size_t hosts_find(const struct hosts *h, const char *name, size_t len, hosts_addr_fn fn, void *arg);

#endif
