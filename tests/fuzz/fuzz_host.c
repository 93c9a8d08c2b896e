/*
 * fuzz_host: libFuzzer target for the Host normaliser and the backend
 * address parser (routing/host.h).  Besides "no crash", it checks the
 * normaliser's contract: the output is lowercase, carries no port and no
 * trailing dot, fits HOST_MAX, and normalising it again gives itself.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing/host.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    char out[HOST_MAX + 1], again[HOST_MAX + 1];
    int len = host_normalise((const char *)d, n, out);
    if (len >= 0) {
        if (len < 1 || len > HOST_MAX || strlen(out) != (size_t)len)
            abort();
        for (int i = 0; i < len; i++)
            if (out[i] >= 'A' && out[i] <= 'Z')
                abort();
        if (out[len - 1] == '.')
            abort();
        if (out[0] != '[' && memchr(out, ':', (size_t)len))
            abort();
        int l2 = host_normalise(out, (size_t)len, again);
        if (l2 != len || memcmp(out, again, (size_t)len) != 0)
            abort();
        size_t zl = 0;
        const char *z = host_zone(out, (size_t)len, &zl);
        if (z && (z <= out || z + zl != out + len || zl == 0))
            abort();
    }
    char name[HOST_MAX + 1];
    int port = 0;
    if (host_parse_hostport((const char *)d, n, name, sizeof(name), &port) == 0) {
        if (port < 1 || port > 65535 || strlen(name) == 0)
            abort();
    }
    return 0;
}
