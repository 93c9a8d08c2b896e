/*
 * main: parses the configuration, answers -t/--help/--version, and hands
 * over to the server.  Fatal errors happen only here, at start-up.
 *
 * -t and start-up run the same checks (cfg_validate, then cfg_check_files,
 * which opens the log files and reads cap-page), so a configuration -t
 * calls ok does not then fail to start for a reason -t could have seen.
 * Binding the listeners is left to start-up, as nginx -t does.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "routing/route.h"

int main(int argc, char **argv)
{
    struct tg_config cfg;
    char err[CFG_ERRLEN];

    /* Descriptors 0-2 are taken (by /dev/null when the parent closed them):
     * otherwise the first file opened — a log, a socket — would become
     * "stderr", and error-log lines would land in it. */
    for (int fd; (fd = open("/dev/null", O_RDWR)) >= 0;) {
        if (fd > STDERR_FILENO) {
            close(fd);
            break;
        }
    }

    /* Body relays take and give back 64 KiB buffer chains many times a
     * second.  glibc would hand the freed top of each worker's heap back to
     * the kernel (madvise) and fault the pages in again on the next response;
     * keep up to 16 MiB free per arena instead, and serve blocks up to 1 MiB
     * from the arenas rather than from mmap. */
    mallopt(M_TRIM_THRESHOLD, 16 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 1024 * 1024);

    cfg_defaults(&cfg);
    int rc = cfg_from_args(&cfg, argc, argv, err, sizeof(err));
    if (rc == 1) {
        cfg_free(&cfg);
        return 0;
    }
    if (rc == 0)
        rc = cfg_validate(&cfg, err, sizeof(err));
    if (rc == 0)
        rc = cfg_check_files(&cfg, err, sizeof(err));
    struct route_addrs *addrs = NULL;
    if (rc == 0 && !(addrs = route_addrs_resolve(&cfg, err, sizeof(err))))
        rc = -1;
    if (rc != 0) {
        fprintf(stderr, "tollgate: %s\n", err);
        if (cfg.check_only)
            fprintf(stderr, "tollgate: configuration test failed\n");
        cfg_free(&cfg);
        return 1;
    }
    if (cfg.check_only) {
        printf("tollgate: configuration %s%sis ok\n", cfg.config_path ? cfg.config_path : "",
               cfg.config_path ? " " : "");
        route_addrs_free(addrs);
        cfg_free(&cfg);
        return 0;
    }
    /* cfg_check_files() has just opened both; this fails only on a race. */
    const char *key = NULL, *path = NULL;
    if (log_open(cfg.error_log, cfg.log_level) != 0) {
        key = "error-log";
        path = cfg.error_log;
    } else if (log_access_open(cfg.access_log) != 0) {
        key = "access-log";
        path = cfg.access_log;
    }
    if (key) {
        int e = errno;
        char where[CFG_ERRLEN];
        cfg_key_origin(&cfg, key, where, sizeof(where));
        fprintf(stderr, "tollgate: %s: cannot open '%s': %s\n", where, path ? path : "-", strerror(e));
        route_addrs_free(addrs);
        cfg_free(&cfg);
        return 1;
    }
    return server_run(&cfg, addrs, argc, argv);
}
