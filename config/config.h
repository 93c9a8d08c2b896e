/*
 * config: turns the command line and the config file into one immutable
 * struct tg_config.  Parsing lives here and nowhere else; the runtime only
 * reads the struct.  A config file is `key value` lines with `#` comments;
 * every long command-line flag is also a key of the same name.  Flags given on
 * the command line override the file.  Repeatable keys (listen, tls-listen,
 * route) given on the command line replace the file's list.
 *
 * Return convention: 0 on success, -1 on error with a message in err
 * ("FILE:LINE: ..." for file errors).
 */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CFG_ERRLEN 512
#define CFG_MAX_KEYS 64             /* room in origin_line[] for every key */
#define CFG_ORIGIN_CLI 0xffffffffu  /* origin_line[]: set by a command-line flag */
/* Most addresses per listener list (listen, tls-listen); the server binds
 * every one of them, so it sizes its per-worker listener table with this. */
#define CFG_MAX_LISTEN 64

/* A listener address as written: host is "0.0.0.0", "::1", ... (no brackets). */
struct cfg_addr {
    char host[64];
    int port;
    unsigned line;   /* line in origin_file, CFG_ORIGIN_CLI, or 0 (default, cfg_parse_addr) */
};

/* A static route: --route HOST=BACKEND[,BACKEND...]; tenant "default". */
struct cfg_route {
    char *host;      /* normalised: lowercase, no trailing dot */
    char *backends;  /* "host:port[,host:port...]" as written */
    unsigned line;   /* line in origin_file, CFG_ORIGIN_CLI, or 0 */
};

struct tg_config {
    char *config_path;          /* -c FILE or NULL */

    struct cfg_addr *listen;    /* default one entry 0.0.0.0:8080 */
    size_t n_listen;
    struct cfg_addr *tls_listen;
    size_t n_tls_listen;
    struct cfg_addr admin_listen;   /* default 127.0.0.1:9180; port 0 = off */

    char *redis_url;            /* NULL = no Redis */
    char *key_prefix;           /* default "tg:" */
    struct cfg_route *routes;
    size_t n_routes;

    int workers;                /* default: number of online cores */
    char *access_log;           /* NULL = off, "-" = stderr, else a path */
    int log_level;              /* LOG_ERR..LOG_DEBUG from <syslog.h>; default LOG_INFO */
    char *error_log;            /* NULL or "-" = stderr */

    /* Timeouts, seconds (fractions allowed). */
    double client_header_timeout;   /* 10 */
    double keepalive_timeout;       /* 75 */
    double upstream_connect_timeout;/* 5 */
    double upstream_read_timeout;   /* 300 */
    double drain_timeout;           /* 30 */
    double client_body_timeout;     /* 60: client silent mid-body while the proxy waits for it */
    double defer_accept;            /* 1: TCP_DEFER_ACCEPT on listeners; 0 = off */

    size_t max_header_size;         /* 65536 */
    size_t buffer_size;             /* 262144: per-direction high watermark */
    size_t splice_min_body;         /* 16384: longer response bodies move by splice(2); 0 = never */

    /* Routing (Redis). */
    size_t route_cache_size;        /* 150000 entries: a 100,000-host hot set with headroom */
    double route_cache_ttl;         /* 60 s safety net */
    double route_negative_ttl;      /* 5 s */
    double route_stale_max_age;     /* 3600 s served while Redis unreachable */
    double redis_timeout;           /* 0.2 s per command */
    double backend_cooldown;        /* 10 s passive-health cool-down */

    /* Metering. */
    double meter_flush_interval;    /* 1 s */
    int cap_status;                 /* 509 */
    char *cap_page;                 /* NULL = built-in page; else a file path */
    char *instance_id;              /* NULL = hostname:pid */

    int check_only;                 /* -t */

    /* Where each key was last set, so that checks made after parsing
     * (cfg_validate, cfg_check_files, start-up) can name the line.  Filled
     * by the parsers; read it through cfg_key_origin(). */
    char *origin_file;              /* the file origin_line refers to, or NULL */
    unsigned origin_line[CFG_MAX_KEYS]; /* per key: file line, CFG_ORIGIN_CLI, or 0 = default */
};

/* Fills cfg with every default.  Never fails. */
void cfg_defaults(struct tg_config *cfg);

/*
 * Parses argv (and the file named by -c, if any) into cfg, which must hold
 * cfg_defaults().  Returns 0, 1 when --help/--version was printed (caller
 * exits 0), -1 on error with err filled.
 */
int cfg_from_args(struct tg_config *cfg, int argc, char **argv, char *err, size_t errlen);

/* Parses config text (the contents of a file) into cfg; name is used in errors. */
int cfg_parse_text(struct tg_config *cfg, const char *name, const char *text, size_t len,
                   char *err, size_t errlen);

/*
 * Checks cross-field rules (ranges, at least one listener, listener
 * addresses of different keys that overlap, compared as numbers: a wildcard
 * covers every address of its family on its port; parseable routes and Redis
 * URL) and refuses tls-listen while there is no TLS layer.  An error about
 * keys set in the config file starts "FILE:LINE: " (of the key or address
 * set last), one about a flag "--key: ".
 */
int cfg_validate(const struct tg_config *cfg, char *err, size_t errlen);

/*
 * Where key (a key name, e.g. "access-log") was last set: writes
 * "FILE:LINE: key" when the config file set it, "--key" for a command-line
 * flag, and "key" for a default, so that an error reads "ORIGIN: message".
 * Returns 1 for the file, 2 for the command line, 0 for a default or an
 * unknown key.
 */
int cfg_key_origin(const struct tg_config *cfg, const char *key, char *buf, size_t len);
/* The same for the static route cfg->routes[i]: "FILE:LINE: route" or "--route". */
int cfg_route_origin(const struct tg_config *cfg, size_t i, char *buf, size_t len);
/* The same for a listener address a of key ("listen", "admin-listen"). */
int cfg_addr_origin(const struct tg_config *cfg, const char *key, const struct cfg_addr *a, char *buf, size_t len);

/*
 * Checks the files the configuration names, as start-up will use them, as
 * `nginx -t` does: access-log and error-log are opened for appending
 * (created if missing, never truncated; "-" is stderr and needs no check),
 * and cap-page is opened and read.  Touches the file system; call it after
 * cfg_validate().  0 / -1 with err "ORIGIN: cannot open PATH: strerror"
 * (ORIGIN as cfg_key_origin() writes it).
 */
int cfg_check_files(const struct tg_config *cfg, char *err, size_t errlen);

/*
 * Checks a Redis URL as the `redis` key takes it: redis://[:password@]host:port[/db]
 * or unix://[:password@]/path[?db=N].  tollgate-ctl uses it too, so that both
 * binaries take the same URLs.  0 / -1 with msg "'URL': reason".
 */
int cfg_check_redis_url(const char *url, char *msg, size_t msglen);

/* Parses "ADDR:PORT" or "[v6]:PORT" into out. 0 / -1. */
int cfg_parse_addr(const char *s, struct cfg_addr *out);

/* Frees every member of cfg (not cfg itself) and resets it to zeros. */
void cfg_free(struct tg_config *cfg);

#endif
