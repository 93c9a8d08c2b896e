/*
 * Fuzz target for the config-file parser: cfg_parse_text() on arbitrary
 * bytes, then cfg_validate() on whatever it accepted, then cfg_free().
 * Any crash, leak, hang or sanitizer report is a bug: bad config must give
 * an error message, never anything else.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct tg_config cfg;
    char err[CFG_ERRLEN];

    cfg_defaults(&cfg);
    err[0] = '\0';
    if (cfg_parse_text(&cfg, "fuzz.conf", (const char *)d, n, err, sizeof(err)) == 0)
        cfg_validate(&cfg, err, sizeof(err));
    else if (strncmp(err, "fuzz.conf:", 10) != 0)
        __builtin_trap();   /* every file error names the file and line */
    cfg_free(&cfg);
    return 0;
}
