/*
 * hosts: the hosts file as a sorted table of (name, address) pairs; see
 * hosts.h.  The names are kept lowercased, without a trailing dot, in one
 * block; the pairs are sorted by name and, for one name, by their order in
 * the file, so that a lookup is a binary search and a run of pairs.
 */
#include "routing/hosts.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "routing/host.h"

struct hosts_ent {
    uint32_t off;                  /* the name, in names */
    uint16_t len;
    uint16_t family;               /* AF_INET or AF_INET6 */
    uint32_t seq;                  /* order in the file */
    unsigned char addr[16];
};

struct hosts {
    char *names;
    struct hosts_ent *e;
    size_t n;
};

static int hosts_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static char hosts_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* The next blank-separated field of [*p, end) (its length in *len), or NULL at the end. */
static const char *hosts_field(const char **p, const char *end, size_t *len)
{
    const char *s = *p;
    while (s < end && hosts_blank(*s))
        s++;
    if (s == end)
        return NULL;
    const char *e = s;
    while (e < end && !hosts_blank(*e))
        e++;
    *len = (size_t)(e - s);
    *p = e;
    return s;
}

/* Parses an address field into addr (4 or 16 bytes); its family, or 0 when it is not one tollgate can use. */
static int hosts_addr(const char *s, size_t len, unsigned char *addr)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len >= sizeof(buf) || memchr(s, '%', len))     /* a scoped address names no interface we could use */
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, addr) == 1)
        return AF_INET;
    if (inet_pton(AF_INET6, buf, addr) == 1)
        return AF_INET6;
    return 0;
}

static int hosts_ent_cmp(const void *x, const void *y, void *arg)
{
    const struct hosts_ent *a = x, *b = y;
    const char *names = arg;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(names + a->off, names + b->off, n);
    if (c != 0)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

struct hosts *hosts_parse(const char *text, size_t len)
{
    struct hosts *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->names = malloc(len ? len : 1);         /* names never take more than the text */
    if (h->names == NULL) {
        free(h);
        return NULL;
    }
    size_t used = 0, cap = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        const char *hash = memchr(p, '#', (size_t)(eol - p));
        const char *q = p, *lend = hash ? hash : eol;
        p = nl ? nl + 1 : end;
        size_t fl;
        const char *f = hosts_field(&q, lend, &fl);
        unsigned char addr[16];
        int family = f ? hosts_addr(f, fl, addr) : 0;
        if (family == 0)
            continue;
        while ((f = hosts_field(&q, lend, &fl)) != NULL) {
            if (fl > 1 && f[fl - 1] == '.')
                fl--;
            if (fl > HOST_MAX)
                continue;
            if (h->n == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                struct hosts_ent *ne = realloc(h->e, ncap * sizeof(*ne));
                if (ne == NULL) {
                    hosts_free(h);
                    return NULL;
                }
                h->e = ne;
                cap = ncap;
            }
            struct hosts_ent *e = &h->e[h->n];
            e->off = (uint32_t)used;
            e->len = (uint16_t)fl;
            e->family = (uint16_t)family;
            e->seq = (uint32_t)h->n;
            memcpy(e->addr, addr, sizeof(addr));
            for (size_t i = 0; i < fl; i++)
                h->names[used + i] = hosts_lower(f[i]);
            used += fl;
            h->n++;
        }
    }
    if (h->n > 1)
        qsort_r(h->e, h->n, sizeof(*h->e), hosts_ent_cmp, h->names);
    return h;
}

struct hosts *hosts_load(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? hosts_parse("", 0) : NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return hosts_parse("", 0);
    }
    size_t cap = st.st_size > 0 && (uint64_t)st.st_size < HOSTS_FILE_MAX ? (size_t)st.st_size + 1 : 4096;
    size_t len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len == cap) {                 /* it grew since fstat() */
            if (cap >= HOSTS_FILE_MAX)
                break;
            size_t ncap = cap * 2 > HOSTS_FILE_MAX ? HOSTS_FILE_MAX : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            errno = e;
            return NULL;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (buf == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (len == HOSTS_FILE_MAX) {          /* cut at the last whole line */
        char *nl = memrchr(buf, '\n', len);
        len = nl ? (size_t)(nl - buf) + 1 : 0;
    }
    struct hosts *h = hosts_parse(buf, len);
    free(buf);
    if (h == NULL)
        errno = ENOMEM;
    return h;
}

void hosts_free(struct hosts *h)
{
    if (h == NULL)
        return;
    free(h->names);
    free(h->e);
    free(h);
}

size_t hosts_count(const struct hosts *h)
{
    return h ? h->n : 0;
}

size_t hosts_find(const struct hosts *h, const char *name, size_t len, hosts_addr_fn fn, void *arg)
{
    if (h == NULL || h->n == 0)
        return 0;
    if (len > 1 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > HOST_MAX)
        return 0;
    char key[HOST_MAX];
    for (size_t i = 0; i < len; i++)
        key[i] = hosts_lower(name[i]);
    /* The first pair whose name is not below key. */
    size_t lo = 0, hi = h->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct hosts_ent *e = &h->e[mid];
        size_t n = e->len < len ? e->len : len;
        int c = memcmp(h->names + e->off, key, n);
        if (c < 0 || (c == 0 && e->len < len))
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t found = 0;
    for (size_t i = lo; i < h->n; i++) {
        const struct hosts_ent *e = &h->e[i];
        if (e->len != len || memcmp(h->names + e->off, key, len) != 0)
            break;
        if (e->family == AF_INET) {
            struct sockaddr_in sin;
            memset(&sin, 0, sizeof(sin));
            sin.sin_family = AF_INET;
            memcpy(&sin.sin_addr, e->addr, 4);
            fn(arg, (const struct sockaddr *)&sin, sizeof(sin));
        } else {
            struct sockaddr_in6 sin6;
            memset(&sin6, 0, sizeof(sin6));
            sin6.sin6_family = AF_INET6;
            memcpy(&sin6.sin6_addr, e->addr, 16);
            fn(arg, (const struct sockaddr *)&sin6, sizeof(sin6));
        }
        found++;
    }
    return found;
}
