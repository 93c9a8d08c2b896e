/*
 * fuzz_redis_url: libFuzzer target for the Redis URL parser that connects
 * (routing/redis.c, through redis_url_check()) and, differentially, for the
 * configuration's own check of the same URL (config/config.c).  Besides
 * "no crash": a refusal comes with a message, and every URL that the
 * configuration accepts (`tollgate -t` says ok) the client accepts too — a
 * URL that passed -t and was then refused at start was a bug once
 * (tests/unit: cfg_redis_urls_agree_with_the_client holds a fixed table;
 * this explores beyond it).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "routing/redis.h"

#define URL_MAX 2048

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    char url[URL_MAX + 1], err[256];
    if (n > URL_MAX)
        return 0;
    memcpy(url, d, n);
    url[n] = '\0';
    err[0] = '\0';
    int client = redis_url_check(url, err, sizeof(err));
    if (client != 0 && client != -1)
        abort();
    if (client < 0 && err[0] == '\0')
        abort();   /* a refusal says why */

    /* The differential half: only URLs that a config line carries as they
     * are (no NUL, no whitespace or control byte, no leading '#'). */
    if (n == 0 || d[0] == '#' || strcmp(url, "off") == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (d[i] <= 0x20 || d[i] == 0x7f)
            return 0;
    char text[URL_MAX + 16];
    int tl = snprintf(text, sizeof(text), "redis %s\n", url);
    struct tg_config cfg;
    char cerr[CFG_ERRLEN];
    cfg_defaults(&cfg);
    int conf = cfg_parse_text(&cfg, "fuzz.conf", text, (size_t)tl, cerr, sizeof(cerr));
    if (conf == 0)
        conf = cfg_validate(&cfg, cerr, sizeof(cerr));
    cfg_free(&cfg);
    if (conf == 0 && client != 0) {
        fprintf(stderr, "config accepts the Redis URL '%s', the client refuses it: %s\n", url, err);
        abort();
    }
    return 0;
}
