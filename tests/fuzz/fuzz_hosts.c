/*
 * fuzz_hosts: libFuzzer target for the hosts-file parser (routing/hosts.h).
 * The input's first line is a name to look up, the rest the file.  Besides
 * "no crash", it checks the table's contract: no more pairs than the text
 * could hold, every address an IPv4 or IPv6 one, and a lookup that ignores
 * case and one trailing dot (the name uppercased, and with a dot added,
 * finds the same addresses).
 */
#include <ctype.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/host.h"
#include "routing/hosts.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

struct fz_sum {
    size_t n;
    uint64_t hash;
};

static void fz_addr(void *arg, const struct sockaddr *sa, socklen_t len)
{
    struct fz_sum *s = arg;
    const unsigned char *a;
    size_t al;
    if (sa->sa_family == AF_INET && len == sizeof(struct sockaddr_in)) {
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        al = 4;
        if (((const struct sockaddr_in *)sa)->sin_port != 0)
            abort();
    } else if (sa->sa_family == AF_INET6 && len == sizeof(struct sockaddr_in6)) {
        a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        al = 16;
        if (((const struct sockaddr_in6 *)sa)->sin6_port != 0)
            abort();
    } else {
        abort();
    }
    for (size_t i = 0; i < al; i++)
        s->hash = s->hash * 131 + a[i] + 1;
    s->n++;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    const char *text = (const char *)d;
    const char *nl = memchr(text, '\n', n);
    size_t ql = nl ? (size_t)(nl - text) : n;
    const char *file = nl ? nl + 1 : text + n;
    size_t fl = (size_t)(text + n - file);
    struct hosts *h = hosts_parse(file, fl);
    if (h == NULL)
        return 0;
    if (hosts_count(h) > fl / 2 + 1)     /* each pair takes an address and a name in the text */
        abort();
    struct fz_sum a = {0, 0}, b = {0, 0}, c = {0, 0};
    size_t r = hosts_find(h, text, ql, fz_addr, &a);
    if (r != a.n)
        abort();
    if (ql <= HOST_MAX) {
        char up[HOST_MAX + 2];
        for (size_t i = 0; i < ql; i++)
            up[i] = (char)toupper((unsigned char)text[i]);
        hosts_find(h, up, ql, fz_addr, &b);
        if (b.n != a.n || b.hash != a.hash)
            abort();
        if (ql > 0 && text[ql - 1] != '.') {
            up[ql] = '.';
            hosts_find(h, up, ql + 1, fz_addr, &c);
            if (c.n != a.n || c.hash != a.hash)
                abort();
        }
    }
    hosts_free(h);
    return 0;
}
