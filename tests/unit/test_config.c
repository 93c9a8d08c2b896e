/*
 * Unit tests for config/ (defaults, every key from the file and from the
 * command line, line-numbered errors, command line over file, repeatable
 * keys, IPv6, bad values, --help/--version, reload) and for the small
 * proxy-side services that read it: log (line format, level filter, rate
 * limit, access log, reopen), metrics (sums and exposition) and admin
 * (/healthz, /metrics, draining, 404, disabled listener).
 *
 * Check runs each test in its own process, so the process-wide state of
 * log, metrics and admin does not leak between tests.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "config/config.h"
#include "proxy/admin.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "routing/redis.h"
#include "tests/unit/tests.h"

/* ---- helpers ---- */

static int parse(struct tg_config *c, const char *text, char *err)
{
    cfg_defaults(c);
    return cfg_parse_text(c, "t.conf", text, strlen(text), err, CFG_ERRLEN);
}

/* Runs cfg_from_args on a NULL-terminated list of arguments after argv[0]. */
static int args(struct tg_config *c, char *err, const char *first, ...)
{
    char *argv[96];
    int argc = 0;
    va_list ap;
    const char *a;

    argv[argc++] = (char *)"tollgate";
    va_start(ap, first);
    for (a = first; a && argc < 95; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    ck_assert_msg(a == NULL, "args(): more than 94 arguments; enlarge argv");
    argv[argc] = NULL;
    cfg_defaults(c);
    err[0] = '\0';
    return cfg_from_args(c, argc, argv, err, CFG_ERRLEN);
}

/* Case i was refused (rc -1) with an error message starting with want. */
static void expect_refused(int rc, const char *err, const char *want, size_t i)
{
    ck_assert_msg(rc == -1, "case %zu accepted", i);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "case %zu: got \"%s\", want prefix \"%s\"", i, err,
                  want);
}

static char tmpdir[64];

static const char *write_tmp(const char *name, const char *text)
{
    static char path[128];
    FILE *f;
    if (!tmpdir[0]) {
        strcpy(tmpdir, "/tmp/tg-unit-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    }
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Checked teardown: removes the files write_tmp() made (and anything beside them). */
static void cleanup_tmp(void)
{
    DIR *d;
    struct dirent *e;
    char p[512];
    if (!tmpdir[0] || !(d = opendir(tmpdir)))
        return;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
    tmpdir[0] = '\0';
}

static char *slurp(const char *path)
{
    static char buf[65536];
    int fd = open(path, O_RDONLY);
    ssize_t n;
    ck_assert_int_ge(fd, 0);
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    ck_assert_int_ge(n, 0);
    buf[n] = '\0';
    return buf;
}

/* ---- config: defaults and every key ---- */

START_TEST(cfg_defaults_are_documented_values)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    cfg_defaults(&c);
    ck_assert_ptr_null(c.config_path);
    ck_assert_uint_eq(c.n_listen, 1);
    ck_assert_str_eq(c.listen[0].host, "0.0.0.0");
    ck_assert_int_eq(c.listen[0].port, 8080);
    ck_assert_uint_eq(c.n_tls_listen, 0);
    ck_assert_str_eq(c.admin_listen.host, "127.0.0.1");
    ck_assert_int_eq(c.admin_listen.port, 9180);
    ck_assert_ptr_null(c.redis_url);
    ck_assert_str_eq(c.key_prefix, "tg:");
    ck_assert_uint_eq(c.n_routes, 0);
    ck_assert_int_eq(c.workers, (int)sysconf(_SC_NPROCESSORS_ONLN));
    ck_assert_ptr_null(c.access_log);
    ck_assert_int_eq(c.log_level, LOG_INFO);
    ck_assert_ptr_null(c.error_log);
    ck_assert(c.client_header_timeout == 10);
    ck_assert(c.keepalive_timeout == 75);
    ck_assert(c.upstream_connect_timeout == 5);
    ck_assert(c.upstream_read_timeout == 300);
    ck_assert(c.drain_timeout == 30);
    ck_assert(c.client_body_timeout == 60);
    ck_assert(c.defer_accept == 1);
    ck_assert_uint_eq(c.max_header_size, 65536);
    ck_assert_uint_eq(c.buffer_size, 262144);
    ck_assert_uint_eq(c.splice_min_body, 16384);
    ck_assert_uint_eq(c.route_cache_size, 150000);
    ck_assert(c.route_cache_ttl == 60);
    ck_assert(c.route_negative_ttl == 5);
    ck_assert(c.route_stale_max_age == 3600);
    ck_assert(c.redis_timeout == 0.2);
    ck_assert(c.backend_cooldown == 10);
    ck_assert(c.meter_flush_interval == 1);
    ck_assert_int_eq(c.cap_status, 509);
    ck_assert_ptr_null(c.cap_page);
    ck_assert_ptr_null(c.instance_id);
    ck_assert_int_eq(c.check_only, 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), 0);
    cfg_free(&c);
    ck_assert_ptr_null(c.listen);
    ck_assert_uint_eq(c.n_listen, 0);
    cfg_free(&c);   /* twice is harmless */
}
END_TEST

static const char every_key[] =
    "# every key once\n"
    "\n"
    "listen 127.0.0.1:8081\n"
    "listen [::1]:8082   # IPv6\n"
    "tls-listen 0.0.0.0:8443\n"
    "admin-listen [::1]:9999\n"
    "redis redis://:s3cret@127.0.0.1:6380/2\n"
    "key-prefix edge:\n"
    "route Example.COM.=127.0.0.1:9001,[::1]:9002\n"
    "route api.example.com=backend.internal:80\n"
    "workers 3\n"
    "access-log /var/log/tollgate/access.log\n"
    "error-log -\n"
    "log-level debug\n"
    "client-header-timeout 2.5\n"
    "keepalive-timeout 30s\n"
    "upstream-connect-timeout 250ms\n"
    "upstream-read-timeout 120\n"
    "drain-timeout 0\n"
    "client-body-timeout 45\n"
    "defer-accept 0\n"
    "max-header-size 32k\n"
    "buffer-size 1m\n"
    "splice-min-body 0\n"
    "route-cache-size 5000\n"
    "route-cache-ttl 30\n"
    "route-negative-ttl 0\n"
    "route-stale-max-age 7200\n"
    "redis-timeout 0.5\n"
    "backend-cooldown 20\n"
    "meter-flush-interval 2\n"
    "cap-status 429\n"
    "cap-page /etc/tollgate/cap.html\n"
    "instance-id edge-1\n";

static void check_every_key(const struct tg_config *c)
{
    ck_assert_uint_eq(c->n_listen, 2);
    ck_assert_str_eq(c->listen[0].host, "127.0.0.1");
    ck_assert_int_eq(c->listen[0].port, 8081);
    ck_assert_str_eq(c->listen[1].host, "::1");
    ck_assert_int_eq(c->listen[1].port, 8082);
    ck_assert_uint_eq(c->n_tls_listen, 1);
    ck_assert_str_eq(c->tls_listen[0].host, "0.0.0.0");
    ck_assert_int_eq(c->tls_listen[0].port, 8443);
    ck_assert_str_eq(c->admin_listen.host, "::1");
    ck_assert_int_eq(c->admin_listen.port, 9999);
    ck_assert_str_eq(c->redis_url, "redis://:s3cret@127.0.0.1:6380/2");
    ck_assert_str_eq(c->key_prefix, "edge:");
    ck_assert_uint_eq(c->n_routes, 2);
    ck_assert_str_eq(c->routes[0].host, "example.com");
    ck_assert_str_eq(c->routes[0].backends, "127.0.0.1:9001,[::1]:9002");
    ck_assert_str_eq(c->routes[1].host, "api.example.com");
    ck_assert_str_eq(c->routes[1].backends, "backend.internal:80");
    ck_assert_int_eq(c->workers, 3);
    ck_assert_str_eq(c->access_log, "/var/log/tollgate/access.log");
    ck_assert_str_eq(c->error_log, "-");
    ck_assert_int_eq(c->log_level, LOG_DEBUG);
    ck_assert(c->client_header_timeout == 2.5);
    ck_assert(c->keepalive_timeout == 30);
    ck_assert(c->upstream_connect_timeout == 0.25);
    ck_assert(c->upstream_read_timeout == 120);
    ck_assert(c->drain_timeout == 0);
    ck_assert(c->client_body_timeout == 45);
    ck_assert(c->defer_accept == 0);
    ck_assert_uint_eq(c->max_header_size, 32768);
    ck_assert_uint_eq(c->buffer_size, 1048576);
    ck_assert_uint_eq(c->splice_min_body, 0);
    ck_assert_uint_eq(c->route_cache_size, 5000);
    ck_assert(c->route_cache_ttl == 30);
    ck_assert(c->route_negative_ttl == 0);
    ck_assert(c->route_stale_max_age == 7200);
    ck_assert(c->redis_timeout == 0.5);
    ck_assert(c->backend_cooldown == 20);
    ck_assert(c->meter_flush_interval == 2);
    ck_assert_int_eq(c->cap_status, 429);
    ck_assert_str_eq(c->cap_page, "/etc/tollgate/cap.html");
    ck_assert_str_eq(c->instance_id, "edge-1");
}

START_TEST(cfg_file_sets_every_key)
{
    struct tg_config c;
    char err[CFG_ERRLEN] = "";
    ck_assert_msg(parse(&c, every_key, err) == 0, "%s", err);
    check_every_key(&c);
    /* tls-listen parses, but validation refuses it until TLS exists. */
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:5: tls-listen: TLS termination is not available in this version");
    c.n_tls_listen = 0;
    ck_assert_msg(cfg_validate(&c, err, sizeof(err)) == 0, "%s", err);
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_cli_sets_every_key)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    int rc = args(&c, err,
        "--listen", "127.0.0.1:8081", "--listen=[::1]:8082", "--tls-listen", "0.0.0.0:8443",
        "--admin-listen", "[::1]:9999", "--redis", "redis://:s3cret@127.0.0.1:6380/2",
        "--key-prefix", "edge:", "--route", "Example.COM.=127.0.0.1:9001,[::1]:9002",
        "--route", "api.example.com=backend.internal:80", "--workers", "3",
        "--access-log", "/var/log/tollgate/access.log", "--error-log", "-", "--log-level", "debug",
        "--client-header-timeout", "2.5", "--keepalive-timeout", "30s",
        "--upstream-connect-timeout", "250ms", "--upstream-read-timeout", "120",
        "--drain-timeout", "0", "--client-body-timeout", "45", "--defer-accept", "0", "--max-header-size", "32k",
        "--buffer-size", "1m", "--splice-min-body", "0", "--route-cache-size", "5000", "--route-cache-ttl", "30",
        "--route-negative-ttl", "0", "--route-stale-max-age", "7200", "--redis-timeout", "0.5",
        "--backend-cooldown", "20", "--meter-flush-interval", "2", "--cap-status", "429",
        "--cap-page", "/etc/tollgate/cap.html", "--instance-id", "edge-1", "-t", NULL);
    /* Every value is parsed, then validation refuses tls-listen (no TLS yet). */
    ck_assert_int_eq(rc, -1);
    ck_assert_str_eq(err, "--tls-listen: TLS termination is not available in this version");
    check_every_key(&c);
    ck_assert_int_eq(c.check_only, 1);
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_file_syntax_comments_crlf_spaces)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    ck_assert_int_eq(parse(&c,
        "   # indented comment\r\n"
        "\t\r\n"
        "workers\t\t7   \r\n"
        "key-prefix a#b   # '#' inside a value is kept\n"
        "access-log /tmp/with space.log\n"
        "instance-id last", err), 0);
    ck_assert_int_eq(c.workers, 7);
    ck_assert_str_eq(c.key_prefix, "a#b");
    ck_assert_str_eq(c.access_log, "/tmp/with space.log");
    ck_assert_str_eq(c.instance_id, "last");
    cfg_free(&c);

    /* empty text keeps the defaults */
    ck_assert_int_eq(parse(&c, "", err), 0);
    ck_assert_uint_eq(c.n_listen, 1);
    cfg_free(&c);
}
END_TEST

/* ---- config: errors ---- */

START_TEST(cfg_errors_carry_file_and_line)
{
    static const struct { const char *text, *want; } cases[] = {
        { "workers 2\n\nbogus 1\n", "t.conf:3: unknown key 'bogus'" },
        { "# c\nworkers\n", "t.conf:2: workers: missing value" },
        { "workers   # only a comment\n", "t.conf:1: workers: missing value" },
        { "\n\n\n\nworkers two\n", "t.conf:5: workers: expected a whole number" },
        { "workers 0\n", "t.conf:1: workers: '0' out of range 1..1024" },
        { "workers 99999999999999\n", "t.conf:1: workers:" },
        { "workers -1\n", "t.conf:1: workers: expected a whole number" },
        { "listen 1.2.3.4\n", "t.conf:1: listen: bad address '1.2.3.4'" },
        { "listen 1.2.3.4:0\n", "t.conf:1: listen: bad address" },
        { "listen 1.2.3.4:65536\n", "t.conf:1: listen: bad address" },
        { "listen 1.2.3.4:80x\n", "t.conf:1: listen: bad address" },
        { "listen 999.2.3.4:80\n", "t.conf:1: listen: bad address" },
        { "listen localhost:80\n", "t.conf:1: listen: bad address" },
        { "listen ::1:8080\n", "t.conf:1: listen: bad address" },
        { "listen [::1]\n", "t.conf:1: listen: bad address" },
        { "listen [::1]8080\n", "t.conf:1: listen: bad address" },
        { "listen [zz::1]:80\n", "t.conf:1: listen: bad address" },
        { "listen 1.2.3.4:80\nlisten 1.2.3.4:80\n", "t.conf:2: listen: '1.2.3.4:80' given twice" },
        { "admin-listen nowhere\n", "t.conf:1: admin-listen: bad address" },
        { "log-level loud\n", "t.conf:1: log-level: 'loud': expected err" },
        { "client-header-timeout 0\n", "t.conf:1: client-header-timeout: '0' out of range" },
        { "client-header-timeout -1\n", "t.conf:1: client-header-timeout: expected seconds" },
        { "client-header-timeout 1e3\n", "t.conf:1: client-header-timeout: expected seconds" },
        { "client-header-timeout nan\n", "t.conf:1: client-header-timeout: expected seconds" },
        { "client-header-timeout inf\n", "t.conf:1: client-header-timeout: expected seconds" },
        { "keepalive-timeout 1.2.3\n", "t.conf:1: keepalive-timeout: expected seconds" },
        { "keepalive-timeout .\n", "t.conf:1: keepalive-timeout: expected seconds" },
        { "upstream-read-timeout 100000\n", "t.conf:1: upstream-read-timeout: '100000' out of range" },
        { "redis-timeout 0ms\n", "t.conf:1: redis-timeout: '0ms' out of range" },
        { "max-header-size 10\n", "t.conf:1: max-header-size: '10' out of range" },
        { "max-header-size 12g\n", "t.conf:1: max-header-size: expected a number of bytes" },
        { "buffer-size k\n", "t.conf:1: buffer-size: expected a number of bytes" },
        { "splice-min-body 1025m\n", "t.conf:1: splice-min-body: '1025m' out of range 0..1073741824" },
        { "splice-min-body -1\n", "t.conf:1: splice-min-body: expected a number of bytes" },
        { "defer-accept 61\n", "t.conf:1: defer-accept: '61' out of range" },
        { "defer-accept soon\n", "t.conf:1: defer-accept: expected seconds" },
        { "route-cache-size 0\n", "t.conf:1: route-cache-size: '0' out of range" },
        { "route-cache-size 1k\n", "t.conf:1: route-cache-size: expected a whole number" },
        { "cap-status 200\n", "t.conf:1: cap-status: '200' out of range 400..599" },
        { "route example.com\n", "t.conf:1: route: expected HOST=BACKEND" },
        { "route =1.2.3.4:80\n", "t.conf:1: route: expected HOST=BACKEND" },
        { "route example.com=\n", "t.conf:1: route: expected HOST=BACKEND" },
        { "route example.com=1.2.3.4\n", "t.conf:1: route: backend '1.2.3.4': missing :PORT" },
        { "route example.com=1.2.3.4:0\n", "t.conf:1: route: backend '1.2.3.4:0': port must be 1..65535" },
        { "route example.com=a:1,,b:2\n", "t.conf:1: route: empty backend in list" },
        { "route example.com=a:1,\n", "t.conf:1: route: empty backend in list" },
        { "route example.com=::1:80\n", "t.conf:1: route: backend '::1:80': write IPv6" },
        { "route example.com=[::1:80\n", "t.conf:1: route: backend '[::1:80': expected [IPv6]:PORT" },
        { "route example.com=bad host:80\n", "t.conf:1: route: backend 'bad host:80': invalid host" },
        { "route exa mple.com=a:1\n", "t.conf:1: route: route host 'exa mple.com': invalid host name" },
        { "route example.com:80=a:1\n", "t.conf:1: route: route host 'example.com:80': must not contain a port" },
        { "route *.example.com=a:1\n", "t.conf:1: route: route host '*.example.com': static routes match exact" },
        { "route a..b=a:1\n", "t.conf:1: route: route host 'a..b': invalid host name" },
        { "route a.com=x:1\nroute A.com.=y:2\n", "t.conf:2: route: duplicate route for 'a.com'" },
        { "redis localhost:6379\n", "t.conf:1: redis: 'localhost:6379': expected redis://" },
        { "redis redis://localhost\n", "t.conf:1: redis: 'redis://localhost': missing :port" },
        { "redis redis://localhost:0\n", "t.conf:1: redis: 'redis://localhost:0': port must be 1..65535" },
        { "redis redis://:6379\n", "t.conf:1: redis: 'redis://:6379': invalid host" },
        { "redis redis://user:pw@h:1\n", "t.conf:1: redis: 'redis://user:pw@h:1': user names are not supported" },
        { "redis redis://:@h:1\n", "t.conf:1: redis: 'redis://:@h:1': empty password" },
        { "redis redis://h:1/x\n", "t.conf:1: redis: 'redis://h:1/x': database must be a number" },
        { "redis redis://[::1:6379\n", "t.conf:1: redis: 'redis://[::1:6379': invalid IPv6 host" },
        { "redis unix://relative.sock\n",
          "t.conf:1: redis: 'unix://relative.sock': expected unix://[:password@]/absolute/path[?db=N]" },
        { "redis unix://u:pw@/r.sock\n", "t.conf:1: redis: 'unix://u:pw@/r.sock': user names are not supported" },
        { "redis unix://:@/r.sock\n", "t.conf:1: redis: 'unix://:@/r.sock': empty password" },
        { "redis unix:///r.sock?db=x\n", "t.conf:1: redis: 'unix:///r.sock?db=x': only ?db=N" },
        { "redis unix:///r.sock?d\n", "t.conf:1: redis: 'unix:///r.sock?d': only ?db=N" },
        { "redis unix:///r.sock?db=\n", "t.conf:1: redis: 'unix:///r.sock?db=': only ?db=N" },
        { "redis unix://:pw@/\n", "t.conf:1: redis: 'unix://:pw@/': expected unix://" },
        { "key-prefix a b\n", "t.conf:1: key-prefix: 'a b': 1 to 64 printable ASCII characters" },
        /* tollgate-ctl refuses it too (schema_prefix_valid): both binaries take the same prefixes */
        { "key-prefix a\xc3\xa9\n", "t.conf:1: key-prefix: " },
        { "config other.conf\n", "t.conf:1: config: only valid on the command line" },
        { "check-config 1\n", "t.conf:1: check-config: only valid on the command line" },
        { "--workers 2\n", "t.conf:1: unknown key '--workers'" },
        { "workers 2\nworkers\t3\x01\n", "t.conf:2: workers: expected a whole number, got '3\\x01'" },
        /* Redis URLs the client (routing/redis.c) would refuse at start */
        { "redis redis://:%zz@h:1\n", "t.conf:1: redis: 'redis://:%zz@h:1': in a password '%' starts an escape" },
        { "redis redis://:a%4@h:1\n", "t.conf:1: redis: 'redis://:a%4@h:1': in a password '%' starts an escape" },
        { "redis redis://:a%00b@h:1\n", "t.conf:1: redis: 'redis://:a%00b@h:1': the password must not contain %00" },
        { "redis redis://:a/b@h:1\n", "t.conf:1: redis: 'redis://:a/b@h:1': write '/' in a password as %2F" },
        { "redis redis://h:1/1234567\n",
          "t.conf:1: redis: 'redis://h:1/1234567': database must be a number of up to 6 digits" },
        { "redis unix:///r.sock?db=1234567\n", "t.conf:1: redis: 'unix:///r.sock?db=1234567': only ?db=N" },
        { "redis unix://:pw@/tmp/a@b.sock\n", "t.conf:1: redis: 'unix://:pw@/tmp/a@b.sock': the password runs to "
          "the last '@'" },
        /* messages: bytes >= 0x80 escaped (a BOM shows), ranges named, plain numbers */
        { "\xef\xbb\xbfworkers 2\n", "t.conf:1: unknown key '\\xef\\xbb\\xbfworkers' (the file starts with a "
          "UTF-8 byte order mark: save it without one)" },
        { "log-level caf\xc3\xa9\n", "t.conf:1: log-level: 'caf\\xc3\\xa9': expected err" },
        { "workers 99999999999999999999\n", "t.conf:1: workers: '99999999999999999999' out of range 1..1024" },
        { "cap-status 99999999999999999999\n", "t.conf:1: cap-status: '99999999999999999999' out of range 400..599" },
        { "buffer-size 99999999999999999999k\n",
          "t.conf:1: buffer-size: '99999999999999999999k' out of range 4096..67108864" },
        { "route-cache-ttl 31536001\n",
          "t.conf:1: route-cache-ttl: '31536001' out of range: must be > 0 and <= 31536000 seconds" },
        { "route-stale-max-age 99999999999999999999999999999999999999\n", "t.conf:1: route-stale-max-age: "
          "'99999999999999999999999999999999999999' out of range: must be >= 0 and <= 31536000 seconds" },
        /* under 1 ms would be a zero timeval: libevent's and hiredis's "no timeout" */
        { "client-header-timeout 0.0000001\n",
          "t.conf:1: client-header-timeout: '0.0000001' is less than 1 ms, the smallest time tollgate keeps" },
        { "drain-timeout 0.5ms\n", "t.conf:1: drain-timeout: '0.5ms' is less than 1 ms" },
        { "error-log off\n", "t.conf:1: error-log: off is not a destination: give - (stderr) or a FILE, "
          "/dev/null to discard" },
        /* listener addresses compared as numbers, within one list */
        { "listen [::1]:81\nlisten [0::1]:81\n", "t.conf:2: listen: '[0::1]:81' given twice (as [::1]:81)" },
        { "listen 127.0.0.1:81\nlisten 0.0.0.0:81\n", "t.conf:2: listen: '0.0.0.0:81' overlaps 127.0.0.1:81" },
        { "listen [::]:81\nlisten [::1]:81\n", "t.conf:2: listen: '[::1]:81' overlaps [::]:81" },
        { "listen [::ffff:127.0.0.1]:81\n", "t.conf:1: listen: '[::ffff:127.0.0.1]:81': IPv6 listeners are "
          "IPv6-only, so an IPv4-mapped address cannot be bound: write 127.0.0.1:81" },
        { "admin-listen [::ffff:127.0.0.1]:81\n", "t.conf:1: admin-listen: '[::ffff:127.0.0.1]:81': IPv6" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_config c;
        char err[CFG_ERRLEN] = "";
        expect_refused(parse(&c, cases[i].text, err), err, cases[i].want, i);
        cfg_free(&c);
    }
}
END_TEST

START_TEST(cfg_nul_byte_is_an_error)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    static const char text[] = "workers 2\nwork\0ers 3\n";
    cfg_defaults(&c);
    ck_assert_int_eq(cfg_parse_text(&c, "n.conf", text, sizeof(text) - 1, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "n.conf:2: NUL byte in line");
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_parse_addr_forms)
{
    struct cfg_addr a;
    ck_assert_int_eq(cfg_parse_addr("0.0.0.0:1", &a), 0);
    ck_assert_str_eq(a.host, "0.0.0.0");
    ck_assert_int_eq(a.port, 1);
    ck_assert_int_eq(cfg_parse_addr("[2001:db8::1]:65535", &a), 0);
    ck_assert_str_eq(a.host, "2001:db8::1");
    ck_assert_int_eq(a.port, 65535);
    ck_assert_int_eq(cfg_parse_addr("[::]:80", &a), 0);
    ck_assert_str_eq(a.host, "::");
    ck_assert_int_eq(cfg_parse_addr("[::ffff:127.0.0.1]:80", &a), 0);
    ck_assert_str_eq(a.host, "::ffff:127.0.0.1");
    static const char *bad[] = { "", ":80", "1.2.3.4:", "1.2.3.4", "[::1]", "[::1]:", "[]:80",
        "[::1]:80:", "::1", "1.2.3.4:+80", "1.2.3.4:080000", "[::1%lo]:80", "a:80", " 1.2.3.4:80" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(cfg_parse_addr(bad[i], &a) == -1, "accepted '%s'", bad[i]);
    ck_assert_int_eq(cfg_parse_addr(NULL, &a), -1);
}
END_TEST

START_TEST(cfg_redis_urls)
{
    static const char *good[] = { "redis://127.0.0.1:6379", "redis://localhost:6379/0",
        "redis://:p@ss:w%2Frd@redis.internal:6379/15", "REDIS://h:1", "redis://h:1/", "redis://h:1/999999",
        "redis://[::1]:6379", "unix:///run/redis.sock",
        "unix://:p%40ss%3Aw%2Frd@/run/redis.sock?db=2", "unix:///run/redis.sock?db=15", "unix://:p@ss@/r.sock" };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct tg_config c;
        char err[CFG_ERRLEN], line[256];
        snprintf(line, sizeof(line), "redis %s\n", good[i]);
        ck_assert_msg(parse(&c, line, err) == 0, "%s: %s", good[i], err);
        ck_assert_str_eq(c.redis_url, good[i]);
        cfg_free(&c);
    }
    struct tg_config c;
    char err[CFG_ERRLEN];
    ck_assert_int_eq(parse(&c, "redis redis://h:1\nredis off\n", err), 0);
    ck_assert_ptr_null(c.redis_url);
    cfg_free(&c);
}
END_TEST

/*
 * config/config.c (check_redis_url) and routing/redis.c (url_parse, through
 * redis_url_check) both read Redis URLs: every URL the config accepts must
 * be one the client accepts, or -t calls ok a URL that fails at start with
 * "bad Redis URL".  The config may refuse more (it wants the port, no user
 * names).  want_cfg pins the config's answer so that a change to either
 * parser shows here.
 */
START_TEST(cfg_redis_urls_agree_with_the_client)
{
    static char long_pw[300], too_long_pw[320], long_enc[300], too_long_enc[320], huge[1200];
    memset(long_pw, 0, sizeof(long_pw));
    memcpy(long_pw, "redis://:", 9);
    memset(long_pw + 9, 'a', 255);
    strcat(long_pw, "@h:1");
    snprintf(too_long_pw, sizeof(too_long_pw), "redis://:a%s", long_pw + 9);       /* 256 bytes */
    memset(long_enc, 0, sizeof(long_enc));
    memcpy(long_enc, "redis://:%41", 12);
    memset(long_enc + 12, 'a', 254);                                               /* 255 decoded */
    strcat(long_enc, "@h:1");
    snprintf(too_long_enc, sizeof(too_long_enc), "redis://:%%41%s", long_enc + 9); /* 256 decoded */
    snprintf(huge, sizeof(huge), "redis://h:1/0%01100d", 0);                       /* over 1024 bytes */
    static const struct { const char *url; int want_cfg; } cases[] = {
        { "redis://127.0.0.1:6379", 1 }, { "redis://h:1/", 1 }, { "redis://h:1/0", 1 },
        { "redis://h:1/999999", 1 }, { "redis://h:1/1234567", 0 }, { "redis://h:1/-1", 0 },
        { "redis://h:1/1?x", 0 }, { "redis://h:1/1@x", 0 }, { "REDIS://H:1", 1 }, { "Redis://h:1/2", 1 },
        { "redis://:pw@h:1", 1 }, { "redis://:p@ss@h:1", 1 }, { "redis://:p%40ss%2F%3a@h:1/3", 1 },
        { "redis://:%zz@h:1", 0 }, { "redis://:%4@h:1", 0 }, { "redis://:a%4@h:1", 0 }, { "redis://:%@h:1", 0 },
        { "redis://:a%00@h:1", 0 }, { "redis://:%0@h:1", 0 }, { "redis://:%ff@h:1", 1 },
        { "redis://:a/b@h:1", 0 }, { "redis://:a/b@h:1/0", 0 }, { "redis://:/@h:1", 0 },
        { "redis://:@h:1", 0 }, { "redis://user:pw@h:1", 0 }, { "redis://pw@h:1", 0 },
        { "redis://[::1]:1", 1 }, { "redis://[::1]:1/4", 1 }, { "redis://[::1]", 0 }, { "redis://[]:1", 0 },
        { "redis://[::1]x:1", 0 }, { "redis://h", 0 }, { "redis://h:", 0 }, { "redis://h:0", 0 },
        { "redis://h:65536", 0 }, { "redis://h:123456", 0 }, { "redis://h h:1", 0 }, { "redis://h\x01x:1", 0 },
        { "redis://h:1/\x7f", 0 },
        { "redis://h%41:1", 0 }, { "redis://:1", 0 }, { "redis://", 0 }, { "http://h:1", 0 }, { "", 0 },
        { "unix:///tmp/r.sock", 1 }, { "UNIX:///tmp/r.sock", 1 }, { "unix:///tmp/r.sock?db=999999", 1 },
        { "unix:///tmp/r.sock?db=1234567", 0 }, { "unix:///tmp/r.sock?db=", 0 }, { "unix:///tmp/r.sock?x=1", 0 },
        { "unix://:pw@/tmp/r.sock", 1 }, { "unix://:p@w@/tmp/r.sock?db=1", 1 }, { "unix://:%zz@/tmp/r.sock", 0 },
        { "unix://:a%00@/tmp/r.sock", 0 }, { "unix://:pw@/tmp/a@b.sock", 0 }, { "unix://:p?w@/tmp/r.sock", 0 },
        { "unix://:@/tmp/r.sock", 0 }, { "unix://relative", 0 }, { "unix://", 0 }, { "unix://:pw@rel", 0 },
        { "unix:///tmp/a@b.sock", 1 },
        { long_pw, 1 }, { too_long_pw, 0 }, { long_enc, 1 }, { too_long_enc, 0 }, { huge, 0 },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_config c;
        char err[CFG_ERRLEN], cerr[256], *line = malloc(strlen(cases[i].url) + 16);
        ck_assert_ptr_nonnull(line);
        sprintf(line, "redis %s\n", cases[i].url);
        int cfg_ok = parse(&c, line, err) == 0 && cfg_validate(&c, err, sizeof(err)) == 0;
        int client_ok = redis_url_check(cases[i].url, cerr, sizeof(cerr)) == 0;
        ck_assert_msg(!cfg_ok || client_ok, "case %zu: config accepts %.80s, the client refuses it: %s", i,
                      cases[i].url, cerr);
        ck_assert_msg(cfg_ok == cases[i].want_cfg, "case %zu: config %s %.80s: %s", i,
                      cfg_ok ? "accepts" : "refuses", cases[i].url, cfg_ok ? "" : err);
        if (!cfg_ok && cases[i].url[0])
            ck_assert_msg(strncmp(err, "t.conf:1: redis: '", 18) == 0, "case %zu: %s", i, err);
        cfg_free(&c);
        free(line);
    }
}
END_TEST

START_TEST(cfg_off_values)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    ck_assert_int_eq(parse(&c, "admin-listen off\naccess-log /x\naccess-log off\n"
                               "listen off\ntls-listen 127.0.0.1:8443\n", err), 0);
    ck_assert_int_eq(c.admin_listen.port, 0);
    ck_assert_ptr_null(c.access_log);
    ck_assert_uint_eq(c.n_listen, 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);   /* TLS only: no TLS layer yet */
    ck_assert_str_eq(err, "t.conf:5: tls-listen: TLS termination is not available in this version");
    cfg_free(&c);

    /* no listener left: the `listen off` that emptied the list is named */
    ck_assert_int_eq(parse(&c, "workers 1\nlisten off\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:2: listen off leaves no listener: give at least one listen or tls-listen address");
    cfg_free(&c);
    ck_assert_int_eq(args(&c, err, "--listen", "off", NULL), -1);
    ck_assert_str_eq(err, "--listen: listen off leaves no listener: give at least one listen or tls-listen address");
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_validate_cross_field)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    ck_assert_int_eq(parse(&c, "listen 127.0.0.1:80\ntls-listen 127.0.0.1:80\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "both a listen and a tls-listen"));
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "listen 127.0.0.1:9180\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "admin-listen 127.0.0.1:9180 is also a proxy listener"));
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "max-header-size 512k\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "max-header-size"));
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_validate_errors_name_the_line)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    /* max-header-size against the default buffer-size: the max-header-size line */
    ck_assert_int_eq(parse(&c, "# big heads\nmax-header-size 512k\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:2: max-header-size (524288) must not exceed buffer-size (262144)");
    cfg_free(&c);
    /* both in the file: whichever of the two comes later */
    ck_assert_int_eq(parse(&c, "max-header-size 64k\nworkers 1\nbuffer-size 32k\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:3: max-header-size (65536) must not exceed buffer-size (32768)");
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "buffer-size 8k\nmax-header-size 16k\nbuffer-size 4k\nmax-header-size 8k\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:4: max-header-size (8192) must not exceed buffer-size (4096)");
    cfg_free(&c);
    /* a flag has no line: the flag is named */
    ck_assert_int_eq(args(&c, err, "--max-header-size", "512k", NULL), -1);
    ck_assert_str_eq(err, "--max-header-size: max-header-size (524288) must not exceed buffer-size (262144)");
    cfg_free(&c);
    const char *path = write_tmp("mh.conf", "workers 2\nmax-header-size 16k\n");
    ck_assert_int_eq(args(&c, err, "-c", path, "--buffer-size", "8k", NULL), -1);
    ck_assert_str_eq(err, "--buffer-size: max-header-size (16384) must not exceed buffer-size (8192)");
    cfg_free(&c);
    ck_assert_int_eq(args(&c, err, "--buffer-size", "8k", "-c", path, NULL), -1);   /* flag still after the file */
    ck_assert_str_eq(err, "--buffer-size: max-header-size (16384) must not exceed buffer-size (8192)");
    cfg_free(&c);
    /* the listener cross-checks name the later line too */
    ck_assert_int_eq(parse(&c, "listen 127.0.0.1:80\nworkers 1\ntls-listen 127.0.0.1:80\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:3: 127.0.0.1:80 is both a listen and a tls-listen address");
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "admin-listen 127.0.0.1:81\n\nlisten 127.0.0.1:81\n", err), 0);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:3: admin-listen 127.0.0.1:81 is also a proxy listener");
    cfg_free(&c);
    /* tls-listen is refused by validation, with its line, until TLS exists */
    ck_assert_int_eq(parse(&c, "listen 127.0.0.1:80\n\ntls-listen 127.0.0.1:8443\n", err), 0);
    ck_assert_uint_eq(c.n_tls_listen, 1);
    ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:3: tls-listen: TLS termination is not available in this version");
    cfg_free(&c);
    ck_assert_int_eq(args(&c, err, "--tls-listen", "127.0.0.1:8443", NULL), -1);
    ck_assert_str_eq(err, "--tls-listen: TLS termination is not available in this version");
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "tls-listen 127.0.0.1:8443\ntls-listen off\n", err), 0);
    ck_assert_msg(cfg_validate(&c, err, sizeof(err)) == 0, "%s", err);
    cfg_free(&c);
}
END_TEST

/*
 * Listener addresses of different keys are compared as numbers: a wildcard
 * takes every address of its family on its port (start-up would fail with
 * "address already in use"), [0::1] is [::1]; the families do not overlap
 * (IPv6 listeners are IPv6-only).  The error names the later of the two.
 */
START_TEST(cfg_listener_overlaps)
{
    static const struct { const char *text, *want; } bad[] = {
        { "listen 0.0.0.0:81\nadmin-listen 127.0.0.1:81\n",
          "t.conf:2: admin-listen 127.0.0.1:81 overlaps listen 0.0.0.0:81" },
        { "admin-listen 127.0.0.1:81\nworkers 1\nlisten 127.0.0.1:82\nlisten 0.0.0.0:81\n",
          "t.conf:4: admin-listen 127.0.0.1:81 overlaps listen 0.0.0.0:81" },
        { "listen [::1]:81\nadmin-listen [0::1]:81\n", "t.conf:2: admin-listen [0::1]:81 overlaps listen [::1]:81" },
        { "listen [::]:81\nadmin-listen [::1]:81\n", "t.conf:2: admin-listen [::1]:81 overlaps listen [::]:81" },
        { "listen 127.0.0.1:9180\n", "t.conf:1: admin-listen 127.0.0.1:9180 is also a proxy listener" },
        { "listen 0.0.0.0:9180\n", "t.conf:1: admin-listen 127.0.0.1:9180 overlaps listen 0.0.0.0:9180" },
        { "listen 0.0.0.0:443\ntls-listen 127.0.0.1:443\n",
          "t.conf:2: listen 0.0.0.0:443 overlaps tls-listen 127.0.0.1:443" },
        { "tls-listen [::1]:443\nlisten [0:0::1]:443\n",
          "t.conf:2: listen [0:0::1]:443 overlaps tls-listen [::1]:443" },
    };
    static const char *good[] = {
        "listen 0.0.0.0:81\nadmin-listen [::1]:81\n", "listen [::]:81\nadmin-listen 127.0.0.1:81\n",
        "listen [::]:81\nlisten 0.0.0.0:81\nadmin-listen 127.0.0.1:82\n", "listen 0.0.0.0:81\nadmin-listen off\n",
        "listen 127.0.0.1:81\nadmin-listen 127.0.0.2:81\n",
    };
    struct tg_config c;
    char err[CFG_ERRLEN];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(parse(&c, bad[i].text, err) == 0, "case %zu: %s", i, err);
        ck_assert_int_eq(cfg_validate(&c, err, sizeof(err)), -1);
        ck_assert_msg(strcmp(err, bad[i].want) == 0, "case %zu: got \"%s\", want \"%s\"", i, err, bad[i].want);
        cfg_free(&c);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        ck_assert_msg(parse(&c, good[i], err) == 0, "good %zu: %s", i, err);
        ck_assert_msg(cfg_validate(&c, err, sizeof(err)) == 0, "good %zu: %s", i, err);
        cfg_free(&c);
    }
    /* a flag names itself; the default admin address has no line */
    ck_assert_int_eq(args(&c, err, "--listen", "0.0.0.0:9180", NULL), -1);
    ck_assert_str_eq(err, "--listen: admin-listen 127.0.0.1:9180 overlaps listen 0.0.0.0:9180");
    cfg_free(&c);
    const char *path = write_tmp("ov.conf", "workers 1\nlisten 0.0.0.0:83\n");
    ck_assert_int_eq(args(&c, err, "-c", path, "--admin-listen", "127.0.0.1:83", NULL), -1);
    ck_assert_str_eq(err, "--admin-listen: admin-listen 127.0.0.1:83 overlaps listen 0.0.0.0:83");
    cfg_free(&c);
    ck_assert_int_eq(args(&c, err, "--admin-listen", "127.0.0.1:83", "-c", path, NULL), -1);
    ck_assert_str_eq(err, "--admin-listen: admin-listen 127.0.0.1:83 overlaps listen 0.0.0.0:83");
    cfg_free(&c);
}
END_TEST

/* The server binds every listen address config accepts: CFG_MAX_LISTEN, no more. */
START_TEST(cfg_listen_limit)
{
    struct tg_config c;
    char err[CFG_ERRLEN], *text = malloc((CFG_MAX_LISTEN + 1) * 40), want[128];
    size_t o = 0;
    ck_assert_ptr_nonnull(text);
    for (int i = 0; i < CFG_MAX_LISTEN; i++)
        o += (size_t)sprintf(text + o, "listen 127.0.0.1:%d\n", 20000 + i);
    ck_assert_msg(parse(&c, text, err) == 0, "%s", err);
    ck_assert_uint_eq(c.n_listen, CFG_MAX_LISTEN);
    ck_assert_uint_eq(c.listen[CFG_MAX_LISTEN - 1].line, CFG_MAX_LISTEN);
    cfg_free(&c);
    sprintf(text + o, "listen 127.0.0.1:%d\n", 20000 + CFG_MAX_LISTEN);
    ck_assert_int_eq(parse(&c, text, err), -1);
    snprintf(want, sizeof(want), "t.conf:%d: listen: too many addresses (max %d)", CFG_MAX_LISTEN + 1, CFG_MAX_LISTEN);
    ck_assert_str_eq(err, want);
    cfg_free(&c);
    free(text);
}
END_TEST

START_TEST(cfg_key_origin_file_flag_default)
{
    struct tg_config c;
    char err[CFG_ERRLEN], buf[256];
    const char *path = write_tmp("org.conf", "# c\nworkers 2\naccess-log /a\nworkers 3\n");
    ck_assert_msg(args(&c, err, "-c", path, "--access-log", "/b", NULL) == 0, "%s", err);
    ck_assert_int_eq(cfg_key_origin(&c, "workers", buf, sizeof(buf)), 1);
    char want[256];
    snprintf(want, sizeof(want), "%s:4: workers", path);   /* the last line that set it */
    ck_assert_str_eq(buf, want);
    ck_assert_int_eq(cfg_key_origin(&c, "access-log", buf, sizeof(buf)), 2);
    ck_assert_str_eq(buf, "--access-log");
    ck_assert_int_eq(cfg_key_origin(&c, "cap-page", buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "cap-page");
    ck_assert_int_eq(cfg_key_origin(&c, "no-such-key", buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "no-such-key");
    cfg_free(&c);
    ck_assert_ptr_null(c.origin_file);
    /* a fresh parse of text names the text's name */
    ck_assert_int_eq(parse(&c, "\n\ncap-status 429\n", err), 0);
    ck_assert_int_eq(cfg_key_origin(&c, "cap-status", buf, sizeof(buf)), 1);
    ck_assert_str_eq(buf, "t.conf:3: cap-status");
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_check_files_opens_logs_and_cap_page)
{
    struct tg_config c;
    char err[CFG_ERRLEN], text[512], want[512], dir[128];
    const char *p = write_tmp("existing.log", "kept\n");
    char existing[128];
    snprintf(existing, sizeof(existing), "%s", p);
    p = write_tmp("cap.html", "<p>over</p>\n");
    char cap[128];
    snprintf(cap, sizeof(cap), "%s", p);
    snprintf(dir, sizeof(dir), "%s", tmpdir);

    /* good: an existing log is appended to, not truncated; a missing one is created */
    snprintf(text, sizeof(text), "access-log %s\nerror-log %s/new-error.log\ncap-page %s\n", existing, dir, cap);
    ck_assert_int_eq(parse(&c, text, err), 0);
    ck_assert_msg(cfg_check_files(&c, err, sizeof(err)) == 0, "%s", err);
    cfg_free(&c);
    struct stat st;
    ck_assert_int_eq(stat(existing, &st), 0);
    ck_assert_int_eq((int)st.st_size, 5);
    snprintf(text, sizeof(text), "%s/new-error.log", dir);
    ck_assert_int_eq(stat(text, &st), 0);

    /* "-" and off need no file; the defaults are fine */
    ck_assert_int_eq(parse(&c, "access-log -\nerror-log -\n", err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), 0);
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "access-log /nonexistent/dir/a.log\naccess-log off\n", err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), 0);
    cfg_free(&c);

    /* bad: FILE:LINE, the key, the path and strerror */
    ck_assert_int_eq(parse(&c, "workers 1\naccess-log /nonexistent/dir/a.log\n", err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:2: access-log: cannot open '/nonexistent/dir/a.log': No such file or directory");
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "\n\n\nerror-log /nonexistent/e.log\n", err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:4: error-log: cannot open '/nonexistent/e.log': No such file or directory");
    cfg_free(&c);
    ck_assert_int_eq(parse(&c, "cap-page /nonexistent.html\n", err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "t.conf:1: cap-page: cannot read '/nonexistent.html': No such file or directory");
    cfg_free(&c);
    snprintf(text, sizeof(text), "cap-page %s\n", dir);
    ck_assert_int_eq(parse(&c, text, err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "t.conf:1: cap-page: cannot read '%s': Is a directory", dir);
    ck_assert_str_eq(err, want);
    cfg_free(&c);
    snprintf(text, sizeof(text), "access-log %s\n", dir);
    ck_assert_int_eq(parse(&c, text, err), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    snprintf(want, sizeof(want), "t.conf:1: access-log: cannot open '%s': Is a directory", dir);
    ck_assert_str_eq(err, want);
    cfg_free(&c);
    /* a flag: named, no line */
    ck_assert_int_eq(args(&c, err, "--error-log", "/nonexistent/e.log", NULL), 0);
    ck_assert_int_eq(cfg_check_files(&c, err, sizeof(err)), -1);
    ck_assert_str_eq(err, "--error-log: cannot open '/nonexistent/e.log': No such file or directory");
    cfg_free(&c);
}
END_TEST

/* ---- config: command line ---- */

START_TEST(cfg_repeatable_keys_replace_then_append)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    /* The file's first listen replaces the default; the rest append. */
    ck_assert_int_eq(parse(&c, "listen 127.0.0.1:1\nlisten 127.0.0.1:2\nlisten [::1]:3\n", err), 0);
    ck_assert_uint_eq(c.n_listen, 3);
    ck_assert_int_eq(c.listen[0].port, 1);
    ck_assert_int_eq(c.listen[2].port, 3);
    ck_assert_str_eq(c.listen[2].host, "::1");
    cfg_free(&c);

    const char *path = write_tmp("rep.conf",
        "listen 127.0.0.1:1\nlisten 127.0.0.1:2\nroute a.com=x:1\nroute b.com=y:2\n"
        "tls-listen 127.0.0.1:443\nworkers 3\nkey-prefix file:\n");
    /* The file's tls-listen stays, so validation refuses it (no TLS yet) after parsing all. */
    ck_assert_int_eq(args(&c, err, "-c", path, "--listen", "127.0.0.1:7", "--listen", "[::1]:8",
                          "--route", "c.com=z:3", "--workers", "5", NULL), -1);
    ck_assert_msg(strstr(err, "rep.conf:5: tls-listen: TLS termination is not available") != NULL, "%s", err);
    ck_assert_str_eq(c.config_path, path);
    ck_assert_uint_eq(c.n_listen, 2);
    ck_assert_int_eq(c.listen[0].port, 7);
    ck_assert_int_eq(c.listen[1].port, 8);
    ck_assert_uint_eq(c.n_routes, 1);
    ck_assert_str_eq(c.routes[0].host, "c.com");
    ck_assert_uint_eq(c.n_tls_listen, 1);          /* not on the command line: file's list stays */
    ck_assert_int_eq(c.workers, 5);                /* command line wins */
    ck_assert_str_eq(c.key_prefix, "file:");       /* file wins over the default */
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_cli_overrides_file_whatever_the_order)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    const char *path = write_tmp("o.conf", "workers 3\nlog-level err\n");
    /* flags before -c still override the file */
    ck_assert_msg(args(&c, err, "--workers=9", "--config", path, NULL) == 0, "%s", err);
    ck_assert_int_eq(c.workers, 9);
    ck_assert_int_eq(c.log_level, LOG_ERR);
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_cli_errors)
{
    static const struct { const char *a1, *a2, *want; } cases[] = {
        { "--workers", "abc", "--workers: expected a whole number, got 'abc'" },
        { "--workers", NULL, "--workers: missing value" },
        { "-c", NULL, "-c: missing value" },
        { "--bogus", NULL, "unknown or ambiguous option '--bogus'" },
        { "-x", NULL, "unknown option -x" },
        { "--help=1", NULL, "--help: takes no value" },
        { "stray", NULL, "unexpected argument 'stray'" },
        { "--listen", "::1:80", "--listen: bad address '::1:80'" },
        { "--listen", "", "--listen: missing value" },
        { "--route", "A.com", "--route: expected HOST=BACKEND" },
        { "--log-level", "trace", "--log-level: 'trace': expected err" },
        { "--redis", "redis://h", "--redis: 'redis://h': missing :port" },
        { "-c", "/nonexistent/tollgate.conf", "/nonexistent/tollgate.conf: cannot open:" },
        { "-c", "/tmp", "/tmp: is a directory" },
        { "--listen", "127.0.0.1:9180", "--listen: admin-listen 127.0.0.1:9180 is also a proxy listener" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tg_config c;
        char err[CFG_ERRLEN];
        expect_refused(args(&c, err, cases[i].a1, cases[i].a2, NULL), err, cases[i].want, i);
        cfg_free(&c);
    }
}
END_TEST

START_TEST(cfg_timeouts_of_a_millisecond_and_zero_where_allowed)
{
    struct tg_config c;
    char err[CFG_ERRLEN] = "";
    ck_assert_msg(parse(&c, "client-header-timeout 0.001\nupstream-read-timeout 1ms\ndrain-timeout 0\n", err) == 0,
                  "%s", err);
    ck_assert(c.client_header_timeout == 0.001 && c.upstream_read_timeout == 0.001 && c.drain_timeout == 0);
    cfg_free(&c);
}
END_TEST

/* A config file of exactly the 16 MiB limit is read; one byte more is refused. */
START_TEST(cfg_file_size_limit_is_exact)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    size_t limit = 16u << 20;
    char *text = malloc(limit + 2);
    ck_assert_ptr_nonnull(text);
    memcpy(text, "workers 3\n#", 11);
    memset(text + 11, 'x', limit - 12);
    text[limit - 1] = '\n';
    text[limit] = '\0';
    const char *path = write_tmp("big.conf", text);
    ck_assert_msg(args(&c, err, "-c", path, NULL) == 0, "%s", err);
    ck_assert_int_eq(c.workers, 3);
    cfg_free(&c);
    text[limit] = '\n';
    text[limit + 1] = '\0';
    path = write_tmp("big.conf", text);
    ck_assert_int_eq(args(&c, err, "-c", path, NULL), -1);
    ck_assert_msg(strstr(err, "big.conf: larger than 16777216 bytes") != NULL, "got %s", err);
    cfg_free(&c);
    free(text);
}
END_TEST

START_TEST(cfg_file_error_through_cli_has_line)
{
    struct tg_config c;
    char err[CFG_ERRLEN], want[256];
    const char *path = write_tmp("bad.conf", "workers 2\n# two\nlisten 1.2.3.4:99999\n");
    ck_assert_int_eq(args(&c, err, "-t", "-c", path, NULL), -1);
    snprintf(want, sizeof(want), "%s:3: listen: bad address '1.2.3.4:99999'", path);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got %s", err);
    cfg_free(&c);
}
END_TEST

/* Captures stdout of cfg_from_args into buf. */
static int args_stdout(struct tg_config *c, char *err, char *buf, size_t size, const char *a1)
{
    int p[2], saved, rc;
    ssize_t n;
    size_t got = 0;
    ck_assert_int_eq(pipe(p), 0);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    dup2(p[1], STDOUT_FILENO);
    close(p[1]);
    rc = args(c, err, a1, NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    while (got + 1 < size && (n = read(p[0], buf + got, size - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(p[0]);
    return rc;
}

START_TEST(cfg_help_and_version)
{
    static char out[32768];
    struct tg_config c;
    char err[CFG_ERRLEN];
    static const char *flags[] = { "--config", "-c,", "--listen", "--tls-listen", "--admin-listen",
        "--redis", "--key-prefix", "--route", "--workers", "--access-log", "--log-level",
        "--client-header-timeout", "--keepalive-timeout", "--upstream-connect-timeout",
        "--upstream-read-timeout", "--drain-timeout", "--check-config", "-t,", "--version", "--help",
        "--error-log", "--client-body-timeout", "--defer-accept", "--max-header-size", "--buffer-size", "--splice-min-body",
        "--route-cache-size", "--route-cache-ttl", "--route-negative-ttl", "--route-stale-max-age",
        "--redis-timeout", "--backend-cooldown", "--meter-flush-interval", "--cap-status",
        "--cap-page", "--instance-id", "[default: 0.0.0.0:8080]", "[default: 127.0.0.1:9180]",
        "[default: tg:]", "[default: 10]", "[default: 75]", "[default: 300]", "[default: 509]",
        "[default: number of cores" };

    ck_assert_int_eq(args_stdout(&c, err, out, sizeof(out), "--help"), 1);
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        ck_assert_msg(strstr(out, flags[i]) != NULL, "--help lacks %s", flags[i]);
    cfg_free(&c);

    ck_assert_int_eq(args_stdout(&c, err, out, sizeof(out), "--version"), 1);
    ck_assert_str_eq(out, "tollgate 0.1.0\n");
    cfg_free(&c);
}
END_TEST

START_TEST(cfg_reentrant_and_argv_untouched)
{
    struct tg_config c;
    char err[CFG_ERRLEN];
    char *argv[] = { "tollgate", "stray", "--workers", "2", NULL };
    char *copy[5];
    memcpy(copy, argv, sizeof(argv));
    /* the first call fails midway: getopt state must not leak into the next */
    cfg_defaults(&c);
    ck_assert_int_eq(cfg_from_args(&c, 4, argv, err, sizeof(err)), -1);
    ck_assert(memcmp(copy, argv, sizeof(argv)) == 0);
    cfg_free(&c);
    for (int round = 0; round < 3; round++) {
        cfg_defaults(&c);
        ck_assert_msg(cfg_from_args(&c, 3, (char *[]){ "tollgate", "--workers", "4", NULL },
                                    err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(c.workers, 4);
        cfg_free(&c);
    }
    cfg_defaults(&c);
    ck_assert_int_eq(cfg_from_args(&c, 1, (char *[]){ "tollgate", NULL }, err, sizeof(err)), 0);
    ck_assert_int_eq(c.workers, (int)sysconf(_SC_NPROCESSORS_ONLN));
    cfg_free(&c);
}
END_TEST

/* ---- log ---- */

/* Checks "YYYY-MM-DDTHH:MM:SS.mmmZ [level] " at the start of line. */
static int line_has_prefix(const char *line, const char *level)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ [";
    size_t i;
    for (i = 0; shape[i]; i++) {
        if (shape[i] == 'd' ? !(line[i] >= '0' && line[i] <= '9') : line[i] != shape[i])
            return 0;
    }
    return strncmp(line + i, level, strlen(level)) == 0 && line[i + strlen(level)] == ']';
}

START_TEST(log_format_level_filter_and_escaping)
{
    const char *path = write_tmp("err.log", "");
    ck_assert_int_eq(log_open(path, LOG_NOTICE), 0);
    ck_assert(log_level_enabled(LOG_NOTICE));
    ck_assert(!log_level_enabled(LOG_INFO));
    log_info("hidden %d", 1);
    log_debug("hidden too");
    log_notice("shown %d", 2);
    log_err("evil\nfake line\x7f");
    log_warn("w");
    log_set_level(LOG_DEBUG);
    log_debug("dbg");
    char *s = slurp(path);
    char *l1 = s, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1, *l4 = strchr(l3, '\n') + 1;
    ck_assert(line_has_prefix(l1, "notice"));
    ck_assert(strncmp(strstr(l1, "] ") + 2, "shown 2\n", 8) == 0);
    ck_assert(line_has_prefix(l2, "err"));
    ck_assert(strncmp(strstr(l2, "] ") + 2, "evil\\x0afake line\\x7f\n", 22) == 0);
    ck_assert(line_has_prefix(l3, "warn"));
    ck_assert(line_has_prefix(l4, "debug"));
    ck_assert_ptr_null(strstr(s, "hidden"));
    ck_assert_ptr_null(strchr(l4, '\n') ? strchr(strchr(l4, '\n') + 1, '\n') : NULL);
}
END_TEST

START_TEST(log_long_line_is_truncated_in_one_piece)
{
    static char big[10000];
    const char *path = write_tmp("long.log", "");
    memset(big, 'a', sizeof(big) - 1);
    ck_assert_int_eq(log_open(path, LOG_INFO), 0);
    log_info("%s", big);
    log_info("after");
    char *s = slurp(path);
    char *nl = strchr(s, '\n');
    ck_assert_ptr_nonnull(nl);
    ck_assert_int_le(nl - s + 1, 4096);
    ck_assert(strncmp(nl - 3, "...", 3) == 0);
    ck_assert(line_has_prefix(nl + 1, "info"));
}
END_TEST

START_TEST(log_level_names)
{
    ck_assert_int_eq(log_level_parse("err"), LOG_ERR);
    ck_assert_int_eq(log_level_parse("warn"), LOG_WARNING);
    ck_assert_int_eq(log_level_parse("notice"), LOG_NOTICE);
    ck_assert_int_eq(log_level_parse("info"), LOG_INFO);
    ck_assert_int_eq(log_level_parse("debug"), LOG_DEBUG);
    ck_assert_int_eq(log_level_parse("INFO"), -1);
    ck_assert_int_eq(log_level_parse(""), -1);
    ck_assert_int_eq(log_level_parse(NULL), -1);
}
END_TEST

START_TEST(log_ratelimit_once_per_key)
{
    const char *path = write_tmp("rl.log", "");
    char key[32];
    ck_assert_int_eq(log_open(path, LOG_INFO), 0);
    ck_assert_int_eq(log_err_ratelimited("bad-domain:a", "first a"), 1);
    ck_assert_int_eq(log_err_ratelimited("bad-domain:a", "second a"), 0);
    ck_assert_int_eq(log_err_ratelimited("bad-domain:b", "first b"), 1);
    /* many other keys evict old slots but never crash */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        ck_assert_int_eq(log_err_ratelimited(key, "k"), 1);
        ck_assert_int_eq(log_err_ratelimited(key, "k"), 0);
    }
    char *s = slurp(path);
    ck_assert_ptr_nonnull(strstr(s, "first a"));
    ck_assert_ptr_null(strstr(s, "second a"));
    ck_assert_ptr_nonnull(strstr(s, "first b"));
}
END_TEST

START_TEST(log_access_and_reopen)
{
    char moved[160];
    const char *p = write_tmp("access.log", "");
    char path[128];
    snprintf(path, sizeof(path), "%s", p);
    ck_assert_int_eq(log_access_enabled(), 0);
    log_access_line("dropped", 7);   /* off: no crash, nothing written */
    ck_assert_int_eq(log_access_open(path), 0);
    ck_assert_int_eq(log_access_enabled(), 1);
    log_access_line("one", 3);
    log_access_line("two\n", 4);
    /* logrotate: move the file away, reopen, new lines go to a new file */
    snprintf(moved, sizeof(moved), "%s.1", path);
    ck_assert_int_eq(rename(path, moved), 0);
    log_access_line("three", 5);
    log_reopen();
    log_access_line("four", 4);
    ck_assert_str_eq(slurp(moved), "one\ntwo\nthree\n");
    ck_assert_str_eq(slurp(path), "four\n");
    ck_assert_int_eq(log_access_open(NULL), 0);
    ck_assert_int_eq(log_access_enabled(), 0);
    ck_assert_int_eq(log_access_open("/nonexistent/dir/a.log"), -1);
    ck_assert_int_eq(log_open("/nonexistent/dir/e.log", LOG_INFO), -1);
}
END_TEST

/* ---- metrics ---- */

static void extra_writer(FILE *f, void *arg)
{
    fprintf(f, "extra_metric %d\n", *(int *)arg);
}

static char *metrics_text(void)
{
    static char *text;
    size_t len;
    free(text);
    text = NULL;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    metrics_write(f);
    fclose(f);
    return text;
}

START_TEST(metrics_sum_workers_and_writers)
{
    static struct tg_metrics w1, w2;
    static int arg = 42;
    char *t = metrics_text();
    ck_assert_ptr_nonnull(strstr(t, "\ntollgate_requests_total 0\n"));

    metrics_register_worker(&w1);
    metrics_register_worker(&w2);
    metrics_register_writer(extra_writer, &arg);
    w1.connections_accepted = 3;
    w2.connections_accepted = 4;
    w1.connections_active = 1;
    w2.connections_active = 2;
    w1.requests_total = 10;
    w2.requests_total = 5;
    w1.responses_by_class[2] = 7;
    w2.responses_by_class[2] = 1;
    w2.responses_by_class[5] = 2;
    w1.upstream_connect_errors = 1;
    w2.upstream_timeouts = 2;
    w1.upstream_resets = 3;
    w2.upstream_reused = 6;
    w1.bytes_in = 100;
    w2.bytes_in = 23;
    w1.bytes_out = 1000;
    w2.bad_requests = 9;
    w1.websocket_upgrades = 1;
    t = metrics_text();
    static const char *want[] = {
        "# HELP tollgate_connections_accepted_total ",
        "# TYPE tollgate_connections_accepted_total counter\ntollgate_connections_accepted_total 7\n",
        "# TYPE tollgate_connections_active gauge\ntollgate_connections_active 3\n",
        "\ntollgate_requests_total 15\n",
        "# TYPE tollgate_responses_total counter\n",
        "\ntollgate_responses_total{class=\"1xx\"} 0\n",
        "\ntollgate_responses_total{class=\"2xx\"} 8\n",
        "\ntollgate_responses_total{class=\"5xx\"} 2\n",
        "\ntollgate_upstream_errors_total{kind=\"connect\"} 1\n",
        "\ntollgate_upstream_errors_total{kind=\"timeout\"} 2\n",
        "\ntollgate_upstream_errors_total{kind=\"reset\"} 3\n",
        "\ntollgate_upstream_reused_total 6\n",
        "\ntollgate_bytes_total{direction=\"in\"} 123\n",
        "\ntollgate_bytes_total{direction=\"out\"} 1000\n",
        "\ntollgate_bad_requests_total 9\n",
        "\ntollgate_websocket_upgrades_total 1\n",
        "\nextra_metric 42\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_msg(strstr(t, want[i]) != NULL, "missing %s in:\n%s", want[i], t);
    /* every sample line follows its own HELP/TYPE: no sample without a TYPE */
    ck_assert_ptr_null(strstr(t, "\n\n"));
    ck_assert(t[strlen(t) - 1] == '\n');
}
END_TEST

/* ---- admin ---- */

static int free_port(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Sends one raw request to 127.0.0.1:port and returns the whole response. */
static char *http_raw(int port, const char *req)
{
    static char buf[65536];
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct timeval tv = { 5, 0 };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    size_t got = 0;
    ssize_t n;
    ck_assert_int_ge(fd, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(write(fd, req, strlen(req)), (ssize_t)strlen(req));
    while (got + 1 < sizeof(buf) && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    return buf;
}

static char *http_get(int port, const char *method, const char *path)
{
    char req[256];
    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method, path);
    return http_raw(port, req);
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

START_TEST(admin_serves_healthz_metrics_and_404)
{
    struct cfg_addr addr;
    char err[256];
    static struct tg_metrics w;
    struct admin *a;
    char *r;

    strcpy(addr.host, "127.0.0.1");
    addr.port = free_port();
    metrics_register_worker(&w);
    w.requests_total = 77;
    ck_assert_ptr_nonnull(strstr(metrics_text(), "tollgate_requests_total "));

    a = admin_start(&addr, err, sizeof(err));
    ck_assert_msg(a != NULL, "%s", err);

    r = http_get(addr.port, "GET", "/healthz");
    ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "%s", r);
    ck_assert_str_eq(body_of(r), "ok\n");

    r = http_get(addr.port, "GET", "/metrics?x=1");
    ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "%s", r);
    ck_assert_ptr_nonnull(strcasestr(r, "Content-Type: text/plain; version=0.0.4"));
    ck_assert_str_eq(body_of(r), metrics_text());   /* what metrics_write() prints, whole */

    r = http_get(addr.port, "HEAD", "/healthz");
    ck_assert_msg(strncmp(r, "HTTP/1.1 200 ", 13) == 0, "%s", r);
    ck_assert_str_eq(body_of(r), "");
    ck_assert_ptr_nonnull(strcasestr(r, "Content-Length: 3\r\n"));

    r = http_get(addr.port, "GET", "/nope");
    ck_assert_msg(strncmp(r, "HTTP/1.1 404 ", 13) == 0, "%s", r);
    r = http_get(addr.port, "GET", "/healthz/x");
    ck_assert_msg(strncmp(r, "HTTP/1.1 404 ", 13) == 0, "%s", r);
    r = http_get(addr.port, "POST", "/metrics");
    ck_assert_msg(strncmp(r, "HTTP/1.1 405 ", 13) == 0, "%s", r);

    admin_set_draining(1);
    r = http_get(addr.port, "GET", "/healthz");
    ck_assert_msg(strncmp(r, "HTTP/1.1 503 ", 13) == 0, "%s", r);
    ck_assert_str_eq(body_of(r), "draining\n");
    admin_set_draining(0);
    r = http_get(addr.port, "GET", "/healthz");
    ck_assert_str_eq(body_of(r), "ok\n");

    /* garbage does not hurt the listener */
    r = http_raw(addr.port, "\x01\x02 garbage\r\n\r\n");
    r = http_get(addr.port, "GET", "/healthz");
    ck_assert_str_eq(body_of(r), "ok\n");

    admin_stop(a);
    /* the port is free again after stop */
    a = admin_start(&addr, err, sizeof(err));
    ck_assert_msg(a != NULL, "%s", err);
    admin_stop(a);
}
END_TEST

START_TEST(admin_bind_error_and_disabled)
{
    struct cfg_addr addr;
    char err[256] = "";
    struct admin *a, *b;

    strcpy(addr.host, "127.0.0.1");
    addr.port = free_port();
    a = admin_start(&addr, err, sizeof(err));
    ck_assert_ptr_nonnull(a);
    b = admin_start(&addr, err, sizeof(err));
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err, "Address already in use") != NULL, "%s", err);
    admin_stop(a);

    addr.port = 0;   /* admin-listen off */
    a = admin_start(&addr, err, sizeof(err));
    ck_assert_ptr_nonnull(a);
    admin_stop(a);
    admin_stop(NULL);

    strcpy(addr.host, "::1");
    addr.port = free_port();
    a = admin_start(&addr, err, sizeof(err));
    if (a)               /* hosts without IPv6 fail cleanly instead */
        admin_stop(a);
    else
        ck_assert(err[0] != '\0');
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, NULL, cleanup_tmp);
    tcase_add_test(tc, cfg_defaults_are_documented_values);
    tcase_add_test(tc, cfg_file_sets_every_key);
    tcase_add_test(tc, cfg_cli_sets_every_key);
    tcase_add_test(tc, cfg_file_syntax_comments_crlf_spaces);
    tcase_add_test(tc, cfg_errors_carry_file_and_line);
    tcase_add_test(tc, cfg_nul_byte_is_an_error);
    tcase_add_test(tc, cfg_parse_addr_forms);
    tcase_add_test(tc, cfg_redis_urls);
    tcase_add_test(tc, cfg_redis_urls_agree_with_the_client);
    tcase_add_test(tc, cfg_off_values);
    tcase_add_test(tc, cfg_validate_cross_field);
    tcase_add_test(tc, cfg_validate_errors_name_the_line);
    tcase_add_test(tc, cfg_listener_overlaps);
    tcase_add_test(tc, cfg_listen_limit);
    tcase_add_test(tc, cfg_key_origin_file_flag_default);
    tcase_add_test(tc, cfg_check_files_opens_logs_and_cap_page);
    tcase_add_test(tc, cfg_repeatable_keys_replace_then_append);
    tcase_add_test(tc, cfg_cli_overrides_file_whatever_the_order);
    tcase_add_test(tc, cfg_cli_errors);
    tcase_add_test(tc, cfg_file_error_through_cli_has_line);
    tcase_add_test(tc, cfg_timeouts_of_a_millisecond_and_zero_where_allowed);
    tcase_add_test(tc, cfg_file_size_limit_is_exact);
    tcase_add_test(tc, cfg_help_and_version);
    tcase_add_test(tc, cfg_reentrant_and_argv_untouched);
    suite_add_tcase(s, tc);

    tc = tcase_create("log");
    tcase_add_checked_fixture(tc, NULL, cleanup_tmp);
    tcase_add_test(tc, log_format_level_filter_and_escaping);
    tcase_add_test(tc, log_long_line_is_truncated_in_one_piece);
    tcase_add_test(tc, log_level_names);
    tcase_add_test(tc, log_ratelimit_once_per_key);
    tcase_add_test(tc, log_access_and_reopen);
    suite_add_tcase(s, tc);

    tc = tcase_create("metrics");
    tcase_add_test(tc, metrics_sum_workers_and_writers);
    suite_add_tcase(s, tc);

    tc = tcase_create("admin");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, admin_serves_healthz_metrics_and_404);
    tcase_add_test(tc, admin_bind_error_and_disabled);
    suite_add_tcase(s, tc);
    return s;
}
