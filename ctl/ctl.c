/*
 * tollgate-ctl: the command agencies and scripts use to edit the routing
 * tables in Redis (issue 3).  Every key name and value check comes from
 * routing/schema.h, the host normaliser from routing/host.h and the pattern
 * and path-rule matchers from routing/match.h, so `domain show` answers with
 * the proxy's own logic and there is no second copy of the schema.
 *
 *   tollgate-ctl [--redis URL] [--key-prefix P] [--json] [--timeout S] COMMAND ...
 *
 * Exit status: 0 done; 1 Redis unreachable or a Redis error, or the output
 * could not be written to stdout; 2 bad usage or invalid input (nothing
 * written); 3 not found; 4 the routing data found in Redis is invalid
 * (domain show: the proxy would answer 502 for that host).  --json output is
 * valid UTF-8 whatever bytes Redis holds (json_str).
 *
 * Writes are atomic per command (MULTI/EXEC), and each change is followed by
 * a hint on the events channel ("domain <host>", "tenant <id>", "patterns");
 * the hint is optional: the proxies see the change within 1 s without it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "config/config.h"
#include "routing/host.h"
#include "routing/match.h"
#include "routing/redis.h"
#include "routing/schema.h"

#define CTL_EXIT_OK        0
#define CTL_EXIT_REDIS     1
#define CTL_EXIT_USAGE     2
#define CTL_EXIT_NOT_FOUND 3
#define CTL_EXIT_BAD_DATA  4

#define CTL_DEFAULT_URL "redis://127.0.0.1:6379"

struct ctl {
    const char *url;
    const char *prefix;
    int json;
    double timeout;
    struct redis_sync *rs;
};

static struct ctl G;

/* ------------------------------------------------------------ output -- */

/*
 * Flushes and closes stdout before the process exits with code.  Output that
 * could not be written (a full disk, /dev/full, a closed descriptor) is lost:
 * that is said on stderr, and a 0 becomes CTL_EXIT_REDIS (1, the "error"
 * status); a non-zero code is kept.  Returns the status to exit with.
 */
static int ctl_finish(int code)
{
    int bad = 0, e = 0;
    if (fflush(stdout) != 0) {
        bad = 1;
        e = errno;
    }
    if (ferror(stdout))
        bad = 1;
    if (fclose(stdout) != 0 && !bad && errno != EBADF) {
        /* EBADF with nothing pending: stdout was closed and nothing was written to it. */
        bad = 1;
        e = errno;
    }
    if (!bad)
        return code;
    fprintf(stderr, "tollgate-ctl: cannot write the output to stdout: %s\n",
            e ? strerror(e) : "write error");
    return code == CTL_EXIT_OK ? CTL_EXIT_REDIS : code;
}

/*
 * Writes "tollgate-ctl: " tag, the message and a newline to stderr.  The
 * message may quote what the user typed: control bytes, DEL and bytes above
 * 0x7e are written as \xNN, as tollgate's own messages do, so that a bad
 * argument cannot write escape sequences to the terminal.
 */
static void vmessage(const char *tag, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void vmessage(const char *tag, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    fputs(tag, stderr);
    for (const unsigned char *p = (const unsigned char *)buf; *p; p++) {
        if (*p < 0x20 || *p > 0x7e)
            fprintf(stderr, "\\x%02x", *p);
        else
            fputc(*p, stderr);
    }
    fputc('\n', stderr);
}

static void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage("tollgate-ctl: ", fmt, ap);
    va_end(ap);
    redis_sync_free(G.rs);
    exit(ctl_finish(code));
}

static void ctl_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage("tollgate-ctl: warning: ", fmt, ap);
    va_end(ap);
}

/*
 * Length of the well-formed UTF-8 sequence (2..4 bytes) that starts at s (n
 * bytes available), 0 when s does not start one: RFC 3629 §4, so no overlong
 * forms, no surrogates (U+D800..DFFF), nothing above U+10FFFF.
 */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;     /* the range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/*
 * Writes s (n bytes, from Redis or the command line) as a JSON string
 * (RFC 8259 §7) that is always valid UTF-8: well-formed UTF-8 sequences are
 * copied, '"', '\\' and control characters (and DEL) escaped, and each byte
 * that is not part of a well-formed sequence written as \u00XX, XX being the
 * byte's value (its Latin-1 reading: "t\xff" -> "t\u00ff").  The byte stays
 * visible, but reads back as the character U+00XX, like the UTF-8 for it does.
 */
static void json_str(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = u[i];
        switch (ch) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (ch < 0x20 || ch == 0x7f) {
                printf("\\u%04x", ch);
            } else if (ch < 0x80) {
                putchar(ch);
            } else {
                size_t l = utf8_seq_len(u + i, n - i);
                if (l == 0) {
                    printf("\\u%04x", ch);
                } else {
                    fwrite(u + i, 1, l, stdout);
                    i += l - 1;
                }
            }
        }
    }
    putchar('"');
}

static void json_cstr(const char *s)
{
    if (s)
        json_str(s, strlen(s));
    else
        fputs("null", stdout);
}

/* Writes `before` then the member "name": s (null when s is NULL); name needs no escaping. */
static void json_kv(const char *before, const char *name, const char *s)
{
    printf("%s\"%s\":", before, name);
    json_cstr(s);
}

/* ------------------------------------------------------------- redis -- */

static void ctl_connect(void)
{
    if (G.rs)
        return;
    char err[512];
    G.rs = redis_sync_connect(G.url, G.timeout, err, sizeof(err));
    if (!G.rs)
        die(CTL_EXIT_REDIS, "%s", err);
}

/* Runs a command; a broken link exits 1.  The reply may be an ERROR (see cmd_ok). */
static struct redis_reply *cmdv(int argc, const char **argv)
{
    ctl_connect();
    char err[512];
    size_t lens[32];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    struct redis_reply *r = redis_sync_cmd(G.rs, argc, argv, lens, err, sizeof(err));
    if (!r)
        die(CTL_EXIT_REDIS, "%s", err);
    return r;
}

/* Like cmdv, but an ERROR reply exits 1 with its message. */
static struct redis_reply *cmd_ok(int argc, const char **argv)
{
    struct redis_reply *r = cmdv(argc, argv);
    if (redis_reply_type(r) == REDIS_T_ERROR) {
        const char *m = redis_reply_str(r, NULL);
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", m ? m : "?");
        redis_sync_reply_free(r);
        die(CTL_EXIT_REDIS, "Redis error on %s: %s", argv[0], msg);
    }
    return r;
}

#define CMD(...) cmd_ok((int)(sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(const char *)), \
                        (const char *[]){ __VA_ARGS__ })

static void cmd_void(int argc, const char **argv)
{
    redis_sync_reply_free(cmd_ok(argc, argv));
}

#define CMDV(...) cmd_void((int)(sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(const char *)), \
                           (const char *[]){ __VA_ARGS__ })

/* Publishes an optional hint; failures only warn (the proxies poll anyway). */
static void publish(enum schema_event ev, const char *name)
{
    char ch[SCHEMA_KEY_MAX], msg[SCHEMA_KEY_MAX];
    if (schema_channel_events(ch, sizeof(ch), G.prefix) < 0 ||
        schema_event_format(msg, sizeof(msg), ev, name, name ? strlen(name) : 0) < 0)
        return;
    const char *argv[] = { "PUBLISH", ch, msg };
    struct redis_reply *r = cmdv(3, argv);
    if (redis_reply_type(r) == REDIS_T_ERROR)
        ctl_warn("could not publish the change hint: %s", redis_reply_str(r, NULL));
    redis_sync_reply_free(r);
}

/* EXEC: exits when the transaction was refused or a queued command failed. */
static struct redis_reply *exec_ok(void)
{
    struct redis_reply *r = CMD("EXEC");
    if (redis_reply_type(r) != REDIS_T_ARRAY)
        die(CTL_EXIT_REDIS, "transaction aborted");
    for (size_t i = 0; i < redis_reply_len(r); i++) {
        const struct redis_reply *e = redis_reply_elem(r, i);
        if (redis_reply_type(e) == REDIS_T_ERROR)
            die(CTL_EXIT_REDIS, "Redis error in transaction: %s", redis_reply_str(e, NULL));
    }
    return r;
}

/* Copies a reply string into a new NUL-terminated buffer ("" when absent). */
static char *rdup(const struct redis_reply *r)
{
    size_t n = 0;
    const char *s = redis_reply_str(r, &n);
    char *o = malloc(n + 1);
    if (!o)
        die(CTL_EXIT_REDIS, "out of memory");
    if (s)
        memcpy(o, s, n);
    o[n] = '\0';
    return o;
}

/* ----------------------------------------------------- arg parsing -- */

struct opt {
    const char *name;   /* "--tenant" */
    int has_arg;
    int repeat;         /* collect every occurrence */
    const char *val;    /* last value (or "1" for flags) */
    const char *vals[64];
    int nvals;
};

/*
 * Parses args against opts; positionals into pos (max npos).  "--x=v" and
 * "--x v" both work; "--" ends options.  Returns the number of positionals;
 * exits 2 on an unknown option, a missing value or too many positionals.
 * Returns -1 when --help was asked.
 */
static int parse_args(int argc, char **argv, struct opt *opts, const char **pos, int npos)
{
    int n = 0, only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0))
            return -1;
        if (!only_pos && a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a, '=');
            size_t nl = eq ? (size_t)(eq - a) : strlen(a);
            struct opt *o = NULL;
            for (struct opt *p = opts; p && p->name; p++)
                if (strlen(p->name) == nl && strncmp(p->name, a, nl) == 0)
                    o = p;
            if (!o)
                die(CTL_EXIT_USAGE, "unknown option %s (see --help)", a);
            const char *v = "1";
            if (o->has_arg) {
                if (eq)
                    v = eq + 1;
                else if (i + 1 < argc)
                    v = argv[++i];
                else
                    die(CTL_EXIT_USAGE, "%s needs a value", o->name);
            } else if (eq) {
                die(CTL_EXIT_USAGE, "%s takes no value", o->name);
            }
            o->val = v;
            if (o->repeat) {
                if (o->nvals >= 64)
                    die(CTL_EXIT_USAGE, "too many %s", o->name);
                o->vals[o->nvals++] = v;
            }
            continue;
        }
        if (n >= npos)
            die(CTL_EXIT_USAGE, "unexpected argument \"%s\" (see --help)", a);
        pos[n++] = a;
    }
    return n;
}

/*
 * Whether a HOST argument carries a port: "name:port", or "[v6]:port" (a
 * colon after the closing bracket; the colons inside belong to the address).
 */
static int arg_host_has_port(const char *h)
{
    h += strspn(h, " \t");
    if (h[0] == '[') {
        const char *close = strchr(h, ']');
        return close && strchr(close, ':') != NULL;
    }
    return strchr(h, ':') != NULL;
}

/*
 * Normalises a HOST argument into out (HOST_MAX + 3 bytes): "example.com",
 * "Example.COM.", "[2001:DB8::1]" (kept bracketed, lowercased: the key the
 * proxy looks up for a Host header "[2001:db8::1]:8080") or "*.example.com"
 * (a wildcard key).  A port, "[v6]:port" included, is refused rather than
 * dropped: domains are routed whatever the port.  Exits 2 on a bad host.
 */
static void arg_host(const char *in, char *out, int allow_wildcard)
{
    int wild = strncmp(in, "*.", 2) == 0;
    const char *h = wild ? in + 2 : in;
    if (wild && !allow_wildcard)
        die(CTL_EXIT_USAGE, "a wildcard is not accepted here: %s", in);
    if (arg_host_has_port(h))
        die(CTL_EXIT_USAGE, "HOST must not include a port (domains are routed whatever the port): %s", in);
    char norm[HOST_MAX + 1];
    int n = host_normalise(h, strlen(h), norm);
    if (n < 0)
        die(CTL_EXIT_USAGE, "invalid host name: \"%s\"", in);
    if (wild && host_is_ip_literal(norm, (size_t)n))
        die(CTL_EXIT_USAGE, "a wildcard needs a DNS zone, not an address: %s", in);
    snprintf(out, HOST_MAX + 3, "%s%s", wild ? "*." : "", norm);
}

static void arg_tenant(const char *t)
{
    if (!schema_tenant_valid(t, strlen(t)))
        die(CTL_EXIT_USAGE, "invalid tenant id \"%s\" (1..%d printable characters, no spaces)", t,
            SCHEMA_TENANT_MAX);
}

/* A byte count: digits with an optional KB/MB/GB/TB (10^3..) or KiB/MiB/GiB/TiB (2^10..) suffix. */
static int parse_size(const char *s, int64_t *out)
{
    size_t n = strlen(s), d = 0;
    while (d < n && s[d] >= '0' && s[d] <= '9')
        d++;
    int64_t v;
    if (d == 0 || schema_u64_parse(s, d, &v) < 0)
        return -1;
    const char *suf = s + d;
    static const struct { const char *s; int64_t m; } sufs[] = {
        { "", 1 }, { "B", 1 },
        { "KB", 1000LL }, { "MB", 1000000LL }, { "GB", 1000000000LL }, { "TB", 1000000000000LL },
        { "KiB", 1LL << 10 }, { "MiB", 1LL << 20 }, { "GiB", 1LL << 30 }, { "TiB", 1LL << 40 },
    };
    for (size_t i = 0; i < sizeof(sufs) / sizeof(sufs[0]); i++) {
        if (strcasecmp(suf, sufs[i].s) == 0) {
            if (v > INT64_MAX / sufs[i].m)
                return -1;
            *out = v * sufs[i].m;
            return 0;
        }
    }
    return -1;
}

static void key_or_die(int rc)
{
    if (rc < 0)
        die(CTL_EXIT_USAGE, "key too long (prefix + name over %d bytes)", SCHEMA_KEY_MAX);
}

/* --------------------------------------------------------------- help -- */

static const char usage_main[] =
    "usage: tollgate-ctl [--redis URL] [--key-prefix P] [--json] [--timeout S] COMMAND ...\n"
    "\n"
    "Edits tollgate's routing tables in Redis (schema: docs/redis-schema.md).\n"
    "\n"
    "commands:\n"
    "  domain add HOST --tenant T --backend ADDR [--backend ADDR...] [--lb round_robin|least_conn]\n"
    "             [--redirect-https]\n"
    "  domain rm HOST                  domain show HOST [--path P]     domain list [--tenant T]\n"
    "  tenant set T [--cap BYTES|none] [--action block|throttle] [--throttle-bps N]\n"
    "  tenant suspend T                tenant resume T                 tenant show T\n"
    "  usage T [--month YYYYMM]\n"
    "  pattern add REGEX TENANT TEMPLATE [--first]     pattern rm REGEX     pattern list\n"
    "  path add HOST PREFIX|~REGEX BACKENDS [--first]  path rm HOST PREFIX|~REGEX  path list HOST\n"
    "\n"
    "options:\n"
    "  --redis URL        redis://[:password@]host:port[/db] or unix:///path (default " CTL_DEFAULT_URL ";\n"
    "                     also $TOLLGATE_REDIS)\n"
    "  --key-prefix P     prefix of every key (default tg:)\n"
    "  --json             machine-readable output\n"
    "  --timeout S        connect/command timeout in seconds (default 5)\n"
    "  --help, --version  this text; the version\n"
    "\n"
    "HOST may be a wildcard *.zone (matches exactly one extra label).  `COMMAND --help` shows details.\n"
    "exit status: 0 ok, 1 Redis error or unreachable, or stdout not written, 2 bad usage or input,\n"
    "             3 not found, 4 invalid routing data in Redis\n";

static const char usage_domain_add[] =
    "usage: tollgate-ctl domain add HOST --tenant T --backend ADDR [--backend ADDR...]\n"
    "                               [--lb round_robin|least_conn] [--redirect-https]\n"
    "Creates or replaces the domain HOST (exact host, or *.zone for a wildcard).  ADDR is\n"
    "host:port or [v6]:port; a --backend may hold a comma-separated list.  Written atomically.\n";
static const char usage_domain_rm[] =
    "usage: tollgate-ctl domain rm HOST\n"
    "Deletes the domain and its path rules.  Exit 3 when it did not exist.\n";
static const char usage_domain_show[] =
    "usage: tollgate-ctl domain show HOST [--path P]\n"
    "Shows which rule routes HOST, as the proxy decides: exact domain, then wildcard *.zone,\n"
    "then the host patterns in order; then the path rules of the matched domain (with --path,\n"
    "the one that picks the backends for P).  Also shows the tenant's policy.\n"
    "Exit 3 when no rule matches (the proxy answers 404), 4 when the data is invalid (502).\n";
static const char usage_domain_list[] =
    "usage: tollgate-ctl domain list [--tenant T]\n"
    "Lists domains (SCAN, never KEYS), sorted; with --tenant only that tenant's.\n";
static const char usage_tenant_set[] =
    "usage: tollgate-ctl tenant set T [--cap BYTES|none] [--action block|throttle] [--throttle-bps N]\n"
    "Sets the tenant's monthly cap (bytes in + out per UTC month; suffixes KB MB GB TB = 10^3..,\n"
    "KiB MiB GiB TiB = 2^10..; none removes the cap), what happens over the cap, and the\n"
    "throttle rate in bytes per second.  Fields not given are left as they are.\n";
static const char usage_tenant_suspend[] =
    "usage: tollgate-ctl tenant suspend T\nEvery domain of T answers 503 until `tenant resume T`.\n";
static const char usage_tenant_resume[] = "usage: tollgate-ctl tenant resume T\nLifts a suspension.\n";
static const char usage_tenant_show[] = "usage: tollgate-ctl tenant show T\nShows the policy and this month's usage.\n";
static const char usage_usage[] =
    "usage: tollgate-ctl usage T [--month YYYYMM]\n"
    "Prints bytes_in, bytes_out and requests of the UTC month (default: this month) and,\n"
    "for the current month, of today (UTC).\n";
static const char usage_pattern_add[] =
    "usage: tollgate-ctl pattern add REGEX TENANT TEMPLATE [--first]\n"
    "Appends a host pattern (tried after exact and wildcard domains, in order).  REGEX is PCRE2,\n"
    "anchored to the whole host, without whitespace (use \\s); TEMPLATE is a backends list that may\n"
    "use $1 or ${name} captures, e.g.  pattern add '^pr-(\\d+)\\.preview\\.example\\.com$' acme 'pr-$1.internal:8080'\n";
static const char usage_pattern_rm[] =
    "usage: tollgate-ctl pattern rm REGEX\nRemoves the pattern(s) with this regex.  Exit 3 when none.\n";
static const char usage_pattern_list[] = "usage: tollgate-ctl pattern list\nLists the host patterns in matching order.\n";
static const char usage_path_add[] =
    "usage: tollgate-ctl path add HOST PREFIX|~REGEX BACKENDS [--first]\n"
    "Appends a path rule to HOST (first match wins): requests whose path starts with PREFIX\n"
    "(or matches the PCRE2 REGEX after ~) go to BACKENDS (host:port[,host:port...]).\n";
static const char usage_path_rm[] =
    "usage: tollgate-ctl path rm HOST PREFIX|~REGEX\nRemoves that path rule.  Exit 3 when absent.\n";
static const char usage_path_list[] = "usage: tollgate-ctl path list HOST\nLists HOST's path rules in order.\n";

static void help_exit(const char *text)
{
    fputs(text, stdout);
    redis_sync_free(G.rs);
    exit(ctl_finish(CTL_EXIT_OK));
}

static void need(int n, int want_min, int want_max, const char *usage)
{
    if (n < 0)
        help_exit(usage);
    if (n < want_min || n > want_max) {
        fputs(usage, stderr);
        die(CTL_EXIT_USAGE, "wrong number of arguments");
    }
}

/* ------------------------------------------------------------ domain -- */

static void domain_key(char *k, const char *host)
{
    key_or_die(schema_key_domain(k, SCHEMA_KEY_MAX, G.prefix, host, strlen(host)));
}

static void paths_key(char *k, const char *host)
{
    key_or_die(schema_key_paths(k, SCHEMA_KEY_MAX, G.prefix, host, strlen(host)));
}

static void tenant_key(char *k, const char *tenant)
{
    key_or_die(schema_key_tenant(k, SCHEMA_KEY_MAX, G.prefix, tenant, strlen(tenant)));
}

static void patterns_key(char *k)
{
    key_or_die(schema_key_patterns(k, SCHEMA_KEY_MAX, G.prefix));
}

static int cmd_domain_add(int argc, char **argv)
{
    struct opt o[] = { { "--tenant", 1, 0, NULL, { 0 }, 0 }, { "--backend", 1, 1, NULL, { 0 }, 0 },
                       { "--lb", 1, 0, NULL, { 0 }, 0 }, { "--redirect-https", 0, 0, NULL, { 0 }, 0 },
                       { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[1];
    need(parse_args(argc, argv, o, pos, 1), 1, 1, usage_domain_add);
    char host[HOST_MAX + 3];
    arg_host(pos[0], host, 1);
    if (!o[0].val)
        die(CTL_EXIT_USAGE, "domain add needs --tenant T");
    arg_tenant(o[0].val);
    if (o[1].nvals == 0)
        die(CTL_EXIT_USAGE, "domain add needs at least one --backend ADDR");
    char backends[8192] = "";
    size_t bl = 0;
    for (int i = 0; i < o[1].nvals; i++) {
        char err[256];
        const char *b = o[1].vals[i];
        if (schema_backends_check(b, strlen(b), err, sizeof(err)) < 0)
            die(CTL_EXIT_USAGE, "%s", err);
        int w = snprintf(backends + bl, sizeof(backends) - bl, "%s%s", bl ? "," : "", b);
        if (w < 0 || (size_t)w >= sizeof(backends) - bl)
            die(CTL_EXIT_USAGE, "backends list too long");
        bl += (size_t)w;
    }
    /* Strip spaces the user may have put after commas: the stored list is canonical. */
    size_t j = 0;
    for (size_t i = 0; i < bl; i++)
        if (backends[i] != ' ' && backends[i] != '\t')
            backends[j++] = backends[i];
    backends[j] = '\0';
    char err[256];
    if (schema_backends_check(backends, j, err, sizeof(err)) < 0)
        die(CTL_EXIT_USAGE, "%s", err);
    int lb = 0;
    if (o[2].val && (lb = schema_lb_parse(o[2].val, strlen(o[2].val))) < 0)
        die(CTL_EXIT_USAGE, "--lb must be %s or %s", SCHEMA_LB_ROUND_ROBIN, SCHEMA_LB_LEAST_CONN);
    const char *redirect = o[3].val ? "1" : "0";

    char k[SCHEMA_KEY_MAX];
    domain_key(k, host);
    CMDV("MULTI");
    CMDV("DEL", k);
    CMDV("HSET", k, SCHEMA_F_TENANT, o[0].val, SCHEMA_F_BACKENDS, backends, SCHEMA_F_LB, schema_lb_name(lb),
         SCHEMA_F_REDIRECT_HTTPS, redirect);
    struct redis_reply *r = exec_ok();
    int existed = redis_reply_int(redis_reply_elem(r, 0)) > 0;
    redis_sync_reply_free(r);
    publish(SCHEMA_EV_DOMAIN, host);
    if (G.json) {
        json_kv("{", "host", host);
        json_kv(",", "key", k);
        printf(",\"created\":%s,\"tenant\":", existed ? "false" : "true");
        json_cstr(o[0].val);
        json_kv(",", "backends", backends);
        printf(",\"lb\":\"%s\",\"redirect_https\":%s}\n", schema_lb_name(lb), o[3].val ? "true" : "false");
    } else {
        printf("%s %s: tenant %s, backends %s, lb %s%s\n", existed ? "updated" : "added", host, o[0].val,
               backends, schema_lb_name(lb), o[3].val ? ", redirect to https" : "");
    }
    return CTL_EXIT_OK;
}

static int cmd_domain_rm(int argc, char **argv)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 1), 1, 1, usage_domain_rm);
    char host[HOST_MAX + 3], k[SCHEMA_KEY_MAX], pk[SCHEMA_KEY_MAX];
    arg_host(pos[0], host, 1);
    domain_key(k, host);
    paths_key(pk, host);
    CMDV("MULTI");
    CMDV("DEL", k);
    CMDV("DEL", pk);
    struct redis_reply *r = exec_ok();
    int existed = redis_reply_int(redis_reply_elem(r, 0)) > 0;
    int had_paths = redis_reply_int(redis_reply_elem(r, 1)) > 0;
    redis_sync_reply_free(r);
    if (!existed && !had_paths) {
        if (G.json) {
            json_kv("{", "host", host);
            printf(",\"removed\":false}\n");
        }
        die(CTL_EXIT_NOT_FOUND, "no such domain: %s", host);
    }
    publish(SCHEMA_EV_DOMAIN, host);
    if (G.json) {
        json_kv("{", "host", host);
        printf(",\"removed\":true,\"paths_removed\":%s}\n", had_paths ? "true" : "false");
    } else {
        printf("removed %s%s\n", host, had_paths ? " and its path rules" : "");
    }
    return CTL_EXIT_OK;
}

/* A domain hash read back: fields as strings (NULL when absent). */
struct dom {
    int exists;
    int wrong_type;
    char *tenant, *backends, *lb, *redirect;
};

static void dom_free(struct dom *d)
{
    free(d->tenant);
    free(d->backends);
    free(d->lb);
    free(d->redirect);
    memset(d, 0, sizeof(*d));
}

static void dom_read(const char *key, struct dom *d)
{
    memset(d, 0, sizeof(*d));
    const char *argv[] = { "HGETALL", key };
    struct redis_reply *r = cmdv(2, argv);
    if (redis_reply_type(r) == REDIS_T_ERROR) {
        const char *m = redis_reply_str(r, NULL);
        if (m && strncmp(m, "WRONGTYPE", 9) == 0) {
            d->exists = 1;
            d->wrong_type = 1;
            redis_sync_reply_free(r);
            return;
        }
        die(CTL_EXIT_REDIS, "Redis error on HGETALL: %s", m ? m : "?");
    }
    size_t n = redis_reply_len(r);
    d->exists = n > 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        const char *f = redis_reply_str(redis_reply_elem(r, i), NULL);
        const struct redis_reply *v = redis_reply_elem(r, i + 1);
        char **dst = NULL;
        if (!f)
            continue;
        if (strcmp(f, SCHEMA_F_TENANT) == 0)
            dst = &d->tenant;
        else if (strcmp(f, SCHEMA_F_BACKENDS) == 0)
            dst = &d->backends;
        else if (strcmp(f, SCHEMA_F_LB) == 0)
            dst = &d->lb;
        else if (strcmp(f, SCHEMA_F_REDIRECT_HTTPS) == 0)
            dst = &d->redirect;
        if (dst && !*dst)
            *dst = rdup(v);
    }
    redis_sync_reply_free(r);
}

/* What the proxy would think of a domain hash: NULL when usable, else the reason. */
static const char *dom_problem(const struct dom *d, char *buf, size_t cap)
{
    if (d->wrong_type)
        return "the key is not a hash";
    if (!d->tenant)
        return "missing field \"tenant\"";
    if (!schema_tenant_valid(d->tenant, strlen(d->tenant)))
        return "invalid tenant id";
    if (!d->backends)
        return "missing field \"backends\"";
    char err[256];
    if (schema_backends_check(d->backends, strlen(d->backends), err, sizeof(err)) < 0) {
        snprintf(buf, cap, "backends: %s", err);
        return buf;
    }
    return NULL;
}

/* Reads a list (LRANGE 0 MATCH_MAX_RULES-1); returns the count, elements in *out (malloc'd). */
static size_t list_read(const char *key, char ***out, int *wrong_type)
{
    char stop[16];
    snprintf(stop, sizeof(stop), "%d", MATCH_MAX_RULES - 1);
    const char *argv[] = { "LRANGE", key, "0", stop };
    struct redis_reply *r = cmdv(4, argv);
    *out = NULL;
    if (wrong_type)
        *wrong_type = 0;
    if (redis_reply_type(r) == REDIS_T_ERROR) {
        const char *m = redis_reply_str(r, NULL);
        if (m && strncmp(m, "WRONGTYPE", 9) == 0 && wrong_type) {
            *wrong_type = 1;
            redis_sync_reply_free(r);
            return 0;
        }
        die(CTL_EXIT_REDIS, "Redis error on LRANGE %s: %s", key, m ? m : "?");
    }
    size_t n = redis_reply_len(r);
    char **v = calloc(n ? n : 1, sizeof(char *));
    if (!v)
        die(CTL_EXIT_REDIS, "out of memory");
    for (size_t i = 0; i < n; i++)
        v[i] = rdup(redis_reply_elem(r, i));
    redis_sync_reply_free(r);
    *out = v;
    return n;
}

static void list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* list_read for a command that needs the list: a key of another type exits with code ("KEY why"). */
static size_t list_read_or_die(const char *key, char ***out, int code, const char *why)
{
    int wrong = 0;
    size_t n = list_read(key, out, &wrong);
    if (wrong)
        die(code, "%s %s", key, why);
    return n;
}

/*
 * Pushes line at the head (first) or the tail of the list, unless the list
 * changed since the caller's WATCH of key (and its checks): returns the new
 * length, or -1 when another writer got in between (the caller checks and
 * tries again).  Two agencies' scripts adding at once would otherwise both
 * pass the checks: a duplicate rule, or a list past what tollgate reads.
 */
static long long list_push(const char *key, const char *line, int first)
{
    /* tollgate reads the first MATCH_MAX_RULES elements only: one more
     * would be ignored (appended) or push the last one out (--first),
     * with no word from the proxy. */
    struct redis_reply *n = CMD("LLEN", key);
    long long have = redis_reply_int(n);
    redis_sync_reply_free(n);
    if (have >= MATCH_MAX_RULES)
        die(CTL_EXIT_USAGE, "%s already holds %lld entries, the most tollgate reads (%d): remove one first",
            key, have, MATCH_MAX_RULES);
    CMDV("MULTI");
    CMDV(first ? "LPUSH" : "RPUSH", key, line);
    struct redis_reply *r = CMD("EXEC");
    if (redis_reply_type(r) == REDIS_T_NIL) {
        redis_sync_reply_free(r);
        return -1;
    }
    const struct redis_reply *e = redis_reply_type(r) == REDIS_T_ARRAY && redis_reply_len(r) == 1
                                      ? redis_reply_elem(r, 0) : NULL;
    if (e == NULL || redis_reply_type(e) != REDIS_T_INTEGER)
        die(CTL_EXIT_REDIS, "Redis error in transaction: %s",
            e && redis_reply_type(e) == REDIS_T_ERROR ? redis_reply_str(e, NULL) : "aborted");
    long long len = redis_reply_int(e);
    redis_sync_reply_free(r);
    return len;
}

/* How often an add is checked again after another writer got in between. */
#define LIST_PUSH_TRIES 20

/* Whether the token (tok, tl) is the whole of s. */
static int token_is(const char *tok, size_t tl, const char *s)
{
    return tl == strlen(s) && memcmp(tok, s, tl) == 0;
}

/* Finds an element's token (the part a command compares) in the stored line. */
typedef void list_token_fn(const char *line, const char **tok, size_t *tl);

/* The whole line. */
static void token_line(const char *line, const char **tok, size_t *tl)
{
    *tok = line;
    *tl = strlen(line);
}

/* The line's first word, as written (no leading blanks skipped). */
static void token_first_word(const char *line, const char **tok, size_t *tl)
{
    *tok = line;
    *tl = strcspn(line, " \t");
}

/*
 * Index of the first element of the list whose token is want, -1 when none;
 * a key of another type exits 1 ("KEY exists and is not a list").
 */
static long list_find_token(const char *key, const char *want, list_token_fn *token)
{
    char **v;
    size_t nv = list_read_or_die(key, &v, CTL_EXIT_REDIS, "exists and is not a list");
    long found = -1;
    for (size_t i = 0; i < nv && found < 0; i++) {
        const char *tok;
        size_t tl;
        token(v[i], &tok, &tl);
        if (token_is(tok, tl, want))
            found = (long)i;
    }
    list_free(v, nv);
    return found;
}

/*
 * Removes (LREM, one each) the elements of the list whose token is want.
 * Returns how many were removed; a key of another type exits 1.
 */
static long long list_remove_token(const char *key, const char *want, list_token_fn *token)
{
    char **v;
    size_t nv = list_read_or_die(key, &v, CTL_EXIT_REDIS, "is not a list");
    long long removed = 0;
    for (size_t i = 0; i < nv; i++) {
        const char *tok;
        size_t tl;
        token(v[i], &tok, &tl);
        if (token_is(tok, tl, want)) {
            struct redis_reply *r = CMD("LREM", key, "1", v[i]);
            removed += redis_reply_int(r);
            redis_sync_reply_free(r);
        }
    }
    list_free(v, nv);
    return removed;
}

/*
 * One element of `pattern list` / `path list`: list_item_open writes the start
 * of its JSON object (member `field` holds the stored line); list_item_close
 * ends it, or in text mode prints the element's line, with err when invalid.
 */
static void list_item_open(size_t i, const char *field, const char *line)
{
    printf("%s{\"index\":%zu", i ? "," : "", i);
    json_kv(",", field, line);
}

static void list_item_close(size_t i, const char *line, const char *err)
{
    if (G.json) {
        json_kv(",", "error", err);
        printf("}");
    } else {
        printf("#%zu\t%s%s%s\n", i, line, err ? "\tINVALID: " : "", err ? err : "");
    }
}

/* Prints the tenant policy as JSON members or text lines. */
static void show_policy(const char *tenant)
{
    char k[SCHEMA_KEY_MAX];
    tenant_key(k, tenant);
    const char *argv[] = { "HMGET", k, SCHEMA_F_CAP_BYTES, SCHEMA_F_CAP_ACTION, SCHEMA_F_THROTTLE_BPS,
                           SCHEMA_F_SUSPENDED };
    struct redis_reply *r = cmdv(6, argv);
    char *cap = NULL, *act = NULL, *thr = NULL, *sus = NULL;
    int wrong = redis_reply_type(r) == REDIS_T_ERROR;
    if (!wrong) {
        const struct redis_reply *e;
        if (redis_reply_type(e = redis_reply_elem(r, 0)) == REDIS_T_STRING) cap = rdup(e);
        if (redis_reply_type(e = redis_reply_elem(r, 1)) == REDIS_T_STRING) act = rdup(e);
        if (redis_reply_type(e = redis_reply_elem(r, 2)) == REDIS_T_STRING) thr = rdup(e);
        if (redis_reply_type(e = redis_reply_elem(r, 3)) == REDIS_T_STRING) sus = rdup(e);
    }
    redis_sync_reply_free(r);
    int64_t capv = -1, thrv = 0;
    if (cap && schema_u64_parse(cap, strlen(cap), &capv) < 0)
        capv = -2;
    if (thr && schema_u64_parse(thr, strlen(thr), &thrv) < 0)
        thrv = -2;
    int actv = act ? schema_cap_action_parse(act, strlen(act)) : 0;
    int susv = sus ? schema_flag_parse(sus, strlen(sus)) : 0;
    if (G.json) {
        printf("\"policy\":{");
        if (wrong) {
            printf("\"error\":\"the tenant key is not a hash\"}");
        } else {
            if (capv >= 0) printf("\"cap_bytes\":%lld", (long long)capv);
            else if (capv == -1) printf("\"cap_bytes\":null");
            else { printf("\"cap_bytes\":null,\"cap_bytes_invalid\":"); json_cstr(cap); }
            json_kv(",", "cap_action", actv >= 0 ? schema_cap_action_name(actv) : act);
            printf(",\"throttle_bps\":%lld,\"suspended\":%s}", (long long)(thrv > 0 ? thrv : 0),
                   susv == 1 ? "true" : "false");
        }
    } else if (wrong) {
        printf("policy:     ERROR: %s is not a hash\n", k);
    } else {
        if (capv >= 0)
            printf("cap:        %lld bytes/month, then %s\n", (long long)capv,
                   actv >= 0 ? schema_cap_action_name(actv) : "block (invalid cap_action)");
        else if (capv == -1)
            printf("cap:        none\n");
        else
            printf("cap:        INVALID cap_bytes \"%s\" (ignored)\n", cap);
        if (thr)
            printf("throttle:   %s bytes/s%s\n", thr, thrv < 0 ? " (INVALID, ignored)" : "");
        printf("suspended:  %s\n", susv == 1 ? "yes (503)" : "no");
    }
    free(cap);
    free(act);
    free(thr);
    free(sus);
}

static int cmd_domain_show(int argc, char **argv)
{
    struct opt o[] = { { "--path", 1, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[1];
    need(parse_args(argc, argv, o, pos, 1), 1, 1, usage_domain_show);
    const char *path = o[0].val;
    if (path && path[0] != '/')
        die(CTL_EXIT_USAGE, "--path must start with '/'");
    char host[HOST_MAX + 3];
    arg_host(pos[0], host, 1);

    char k[SCHEMA_KEY_MAX];
    const char *kind = NULL;
    char matched[HOST_MAX + 3] = "";   /* the domain key's host part (exact host or *.zone) */
    struct dom d;
    char *pat_tenant = NULL, *pat_regex = NULL;
    char pat_backends[4096] = "";
    long pat_index = -1;
    int rc = CTL_EXIT_OK;
    char problem_buf[512];
    const char *problem = NULL;

    domain_key(k, host);
    dom_read(k, &d);
    if (d.exists) {
        kind = strncmp(host, "*.", 2) == 0 ? "wildcard" : "exact";
        snprintf(matched, sizeof(matched), "%s", host);
    } else if (strncmp(host, "*.", 2) != 0) {
        size_t zl = 0;
        const char *zone = host_zone(host, strlen(host), &zl);
        if (zone) {
            key_or_die(schema_key_wildcard(k, sizeof(k), G.prefix, zone, zl));
            dom_free(&d);
            dom_read(k, &d);
            if (d.exists) {
                kind = "wildcard";
                snprintf(matched, sizeof(matched), "*.%.*s", (int)zl, zone);
            }
        }
        if (!kind) {
            char pk[SCHEMA_KEY_MAX];
            patterns_key(pk);
            int wrong = 0;
            char **pv;
            size_t pn = list_read(pk, &pv, &wrong);
            if (wrong)
                ctl_warn("%s is not a list: host patterns are ignored by the proxy", pk);
            for (size_t i = 0; i < pn && !kind; i++) {
                char err[256];
                struct match_pattern *mp = match_pattern_new(pv[i], strlen(pv[i]), err, sizeof(err));
                if (!mp)
                    continue;        /* the proxy skips (and logs) a pattern that does not compile */
                int m = match_pattern_exec(mp, host, strlen(host), pat_backends, sizeof(pat_backends), err,
                                           sizeof(err));
                if (m != 0) {
                    kind = "pattern";
                    pat_index = (long)i;
                    pat_tenant = strdup(match_pattern_tenant(mp));
                    pat_regex = strdup(match_pattern_regex(mp));
                    if (m < 0) {
                        snprintf(problem_buf, sizeof(problem_buf), "pattern: %s", err);
                        problem = problem_buf;
                    } else if (schema_backends_check(pat_backends, strlen(pat_backends), err, sizeof(err)) < 0) {
                        snprintf(problem_buf, sizeof(problem_buf), "substituted backends: %s", err);
                        problem = problem_buf;
                    }
                }
                match_pattern_free(mp);
            }
            list_free(pv, pn);
        }
    }
    if (!kind) {
        dom_free(&d);
        if (G.json) {
            json_kv("{", "host", host);
            printf(",\"match\":null}\n");
        } else {
            printf("%s: no rule matches (the proxy answers 404)\n", host);
        }
        redis_sync_free(G.rs);
        exit(ctl_finish(CTL_EXIT_NOT_FOUND));
    }

    const char *tenant = pat_tenant;
    const char *backends = pat_backends;
    int lb = 0, redirect = 0;
    if (strcmp(kind, "pattern") != 0) {
        problem = dom_problem(&d, problem_buf, sizeof(problem_buf));
        tenant = d.tenant;
        backends = d.backends;
        if (d.lb && (lb = schema_lb_parse(d.lb, strlen(d.lb))) < 0) {
            ctl_warn("invalid lb \"%s\": the proxy uses round_robin", d.lb);
            lb = 0;
        }
        if (d.redirect && (redirect = schema_flag_parse(d.redirect, strlen(d.redirect))) < 0) {
            ctl_warn("invalid redirect_https \"%s\": the proxy uses 0", d.redirect);
            redirect = 0;
        }
    }

    /* Path rules of the matched domain key (pattern matches have none). */
    char **rules = NULL;
    size_t nrules = 0;
    int rules_wrong = 0;
    long chosen = -1;
    const char *chosen_backends = backends;
    struct match_paths *mps = NULL;
    if (strcmp(kind, "pattern") != 0 && !problem) {
        char pk[SCHEMA_KEY_MAX];
        paths_key(pk, matched);
        nrules = list_read(pk, &rules, &rules_wrong);
        if (rules_wrong) {
            snprintf(problem_buf, sizeof(problem_buf), "%.400s is not a list", pk);
            problem = problem_buf;
        }
        mps = match_paths_new();
        for (size_t i = 0; i < nrules && mps && !problem; i++) {
            char err[256];
            if (match_paths_add(mps, rules[i], strlen(rules[i]), err, sizeof(err)) < 0) {
                snprintf(problem_buf, sizeof(problem_buf), "path rule %zu \"%.200s\": %s", i, rules[i], err);
                problem = problem_buf;
            }
        }
        if (path && mps && !problem) {
            int f = match_paths_find(mps, path, strlen(path));
            if (f == -2) {
                snprintf(problem_buf, sizeof(problem_buf), "a path regex hit the PCRE2 limits on %s", path);
                problem = problem_buf;
            } else if (f >= 0) {
                size_t bl = 0;
                const char *b = match_paths_backends(mps, (size_t)f, &bl);
                static char cb[4096];
                snprintf(cb, sizeof(cb), "%.*s", (int)bl, b);
                chosen = f;
                chosen_backends = cb;
            }
        }
    }
    if (problem)
        rc = CTL_EXIT_BAD_DATA;

    if (G.json) {
        json_kv("{", "host", host);
        printf(",\"match\":\"%s\",", kind);
        if (strcmp(kind, "pattern") == 0) {
            printf("\"pattern_index\":%ld,\"regex\":", pat_index);
            json_cstr(pat_regex);
        } else {
            json_kv("", "key", k);
            json_kv(",", "domain", matched);
        }
        json_kv(",", "tenant", tenant);
        json_kv(",", "backends", backends);
        printf(",\"lb\":\"%s\",\"redirect_https\":%s", schema_lb_name(lb), redirect ? "true" : "false");
        printf(",\"paths\":[");
        for (size_t i = 0; i < nrules; i++) {
            if (i)
                putchar(',');
            json_cstr(rules[i]);
        }
        printf("]");
        if (path) {
            json_kv(",", "path", path);
            printf(",\"path_rule\":");
            if (chosen >= 0)
                printf("%ld", chosen);
            else
                printf("null");
            json_kv(",", "path_backends", problem ? NULL : chosen_backends);
        }
        json_kv(",", "error", problem);
        if (tenant && schema_tenant_valid(tenant, strlen(tenant))) {
            putchar(',');
            show_policy(tenant);
        }
        printf("}\n");
    } else {
        printf("host:       %s\n", host);
        if (strcmp(kind, "pattern") == 0)
            printf("match:      pattern #%ld  %s\n", pat_index, pat_regex);
        else
            printf("match:      %s  (%s)\n", kind, k);
        printf("tenant:     %s\n", tenant ? tenant : "(missing)");
        printf("backends:   %s\n", backends ? backends : "(missing)");
        printf("lb:         %s\n", schema_lb_name(lb));
        printf("redirect:   %s\n", redirect ? "http -> https" : "no");
        for (size_t i = 0; i < nrules; i++)
            printf("path #%zu:    %s%s\n", i, rules[i], (long)i == chosen ? "   <- matches" : "");
        if (path)
            printf("path %s -> %s%s\n", path, problem ? "(invalid data)" : chosen_backends,
                   chosen >= 0 ? "" : " (no path rule: domain backends)");
        if (problem)
            printf("ERROR:      %s (the proxy answers 502 for this host)\n", problem);
        if (tenant && schema_tenant_valid(tenant, strlen(tenant)))
            show_policy(tenant);
    }
    match_paths_free(mps);
    list_free(rules, nrules);
    free(pat_tenant);
    free(pat_regex);
    dom_free(&d);
    return rc;
}

static int strp_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmd_domain_list(int argc, char **argv)
{
    struct opt o[] = { { "--tenant", 1, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[1];
    need(parse_args(argc, argv, o, pos, 0), 0, 0, usage_domain_list);
    const char *want = o[0].val;
    if (want)
        arg_tenant(want);
    char match[SCHEMA_KEY_MAX * 2], fam[SCHEMA_KEY_MAX];
    key_or_die(schema_key_family(match, sizeof(match), G.prefix, SCHEMA_K_DOMAIN, 1));
    key_or_die(schema_key_family(fam, sizeof(fam), G.prefix, SCHEMA_K_DOMAIN, 0));
    size_t fl = strlen(fam);

    char **keys = NULL;
    size_t nk = 0, capk = 0;
    char cursor[32] = "0";
    ctl_connect();
    do {
        const char *argv2[] = { "SCAN", cursor, "MATCH", match, "COUNT", "1000" };
        struct redis_reply *r = cmd_ok(6, argv2);
        const struct redis_reply *cur = redis_reply_elem(r, 0), *arr = redis_reply_elem(r, 1);
        const char *cs = redis_reply_str(cur, NULL);
        if (!cs || redis_reply_type(arr) != REDIS_T_ARRAY)
            die(CTL_EXIT_REDIS, "unexpected SCAN reply");
        snprintf(cursor, sizeof(cursor), "%s", cs);
        for (size_t i = 0; i < redis_reply_len(arr); i++) {
            if (nk == capk) {
                capk = capk ? capk * 2 : 1024;
                keys = realloc(keys, capk * sizeof(*keys));
                if (!keys)
                    die(CTL_EXIT_REDIS, "out of memory");
            }
            keys[nk++] = rdup(redis_reply_elem(arr, i));
        }
        redis_sync_reply_free(r);
    } while (strcmp(cursor, "0") != 0);

    /* SCAN may return a key twice: sort and drop duplicates. */
    qsort(keys, nk, sizeof(*keys), strp_cmp);
    size_t u = 0;
    for (size_t i = 0; i < nk; i++) {
        if (u && strcmp(keys[u - 1], keys[i]) == 0) {
            free(keys[i]);
            continue;
        }
        keys[u++] = keys[i];
    }
    nk = u;

    /* Fields, pipelined in batches. */
    if (G.json)
        printf("[");
    size_t shown = 0;
    const size_t batch = 256;
    for (size_t b0 = 0; b0 < nk; b0 += batch) {
        size_t b1 = b0 + batch < nk ? b0 + batch : nk;
        char err[512];
        for (size_t i = b0; i < b1; i++) {
            const char *a[] = { "HMGET", keys[i], SCHEMA_F_TENANT, SCHEMA_F_BACKENDS };
            size_t l[] = { 5, strlen(keys[i]), strlen(SCHEMA_F_TENANT), strlen(SCHEMA_F_BACKENDS) };
            if (redis_sync_append(G.rs, 4, a, l, err, sizeof(err)) < 0)
                die(CTL_EXIT_REDIS, "%s", err);
        }
        for (size_t i = b0; i < b1; i++) {
            struct redis_reply *r = redis_sync_read(G.rs, err, sizeof(err));
            if (!r)
                die(CTL_EXIT_REDIS, "%s", err);
            const char *host = keys[i] + fl;
            char *t = NULL, *be = NULL;
            int bad = redis_reply_type(r) != REDIS_T_ARRAY;
            if (!bad) {
                if (redis_reply_type(redis_reply_elem(r, 0)) == REDIS_T_STRING)
                    t = rdup(redis_reply_elem(r, 0));
                if (redis_reply_type(redis_reply_elem(r, 1)) == REDIS_T_STRING)
                    be = rdup(redis_reply_elem(r, 1));
            }
            redis_sync_reply_free(r);
            if (!want || (t && strcmp(t, want) == 0)) {
                if (G.json) {
                    json_kv(shown ? ",{" : "{", "host", host);
                    json_kv(",", "tenant", t);
                    json_kv(",", "backends", be);
                    printf("}");
                } else {
                    printf("%s\t%s\t%s\n", host, t ? t : (bad ? "(not a hash)" : "(no tenant)"),
                           be ? be : "(no backends)");
                }
                shown++;
            }
            free(t);
            free(be);
        }
    }
    if (G.json)
        printf("]\n");
    for (size_t i = 0; i < nk; i++)
        free(keys[i]);
    free(keys);
    return CTL_EXIT_OK;
}

/* ------------------------------------------------------------ tenant -- */

static int cmd_tenant_set(int argc, char **argv)
{
    struct opt o[] = { { "--cap", 1, 0, NULL, { 0 }, 0 }, { "--action", 1, 0, NULL, { 0 }, 0 },
                       { "--throttle-bps", 1, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[1];
    need(parse_args(argc, argv, o, pos, 1), 1, 1, usage_tenant_set);
    const char *t = pos[0];
    arg_tenant(t);
    if (!o[0].val && !o[1].val && !o[2].val)
        die(CTL_EXIT_USAGE, "tenant set needs --cap, --action or --throttle-bps");
    int64_t cap = -1, thr = -1;
    int nocap = 0;
    if (o[0].val) {
        if (strcmp(o[0].val, "none") == 0)
            nocap = 1;
        else if (parse_size(o[0].val, &cap) < 0)
            die(CTL_EXIT_USAGE, "--cap must be a byte count (e.g. 500000000000, 500GB, 1TiB) or none");
    }
    int action = -1;
    if (o[1].val && (action = schema_cap_action_parse(o[1].val, strlen(o[1].val))) < 0)
        die(CTL_EXIT_USAGE, "--action must be %s or %s", SCHEMA_CAP_BLOCK, SCHEMA_CAP_THROTTLE);
    if (o[2].val) {
        if (parse_size(o[2].val, &thr) < 0 || thr == 0)
            die(CTL_EXIT_USAGE, "--throttle-bps must be a positive number of bytes per second");
    }
    char k[SCHEMA_KEY_MAX];
    tenant_key(k, t);
    if (action == 1 && thr < 0) {
        /* throttle without a rate would block: insist on a rate, given now or already stored. */
        const char *a[] = { "HGET", k, SCHEMA_F_THROTTLE_BPS };
        struct redis_reply *r = cmdv(3, a);
        int have = redis_reply_type(r) == REDIS_T_STRING;
        redis_sync_reply_free(r);
        if (!have)
            die(CTL_EXIT_USAGE, "--action throttle needs --throttle-bps N (none stored yet)");
    }
    char capbuf[32], thrbuf[32];
    const char *argv2[12];
    int n = 0;
    argv2[n++] = "HSET";
    argv2[n++] = k;
    if (cap >= 0) {
        snprintf(capbuf, sizeof(capbuf), "%lld", (long long)cap);
        argv2[n++] = SCHEMA_F_CAP_BYTES;
        argv2[n++] = capbuf;
    }
    if (action >= 0) {
        argv2[n++] = SCHEMA_F_CAP_ACTION;
        argv2[n++] = schema_cap_action_name(action);
    }
    if (thr >= 0) {
        snprintf(thrbuf, sizeof(thrbuf), "%lld", (long long)thr);
        argv2[n++] = SCHEMA_F_THROTTLE_BPS;
        argv2[n++] = thrbuf;
    }
    CMDV("MULTI");
    if (n > 2)
        cmd_void(n, argv2);
    if (nocap)
        CMDV("HDEL", k, SCHEMA_F_CAP_BYTES);
    redis_sync_reply_free(exec_ok());
    publish(SCHEMA_EV_TENANT, t);
    if (G.json) {
        json_kv("{", "tenant", t);
        json_kv(",", "key", k);
        printf(",");
        show_policy(t);
        printf("}\n");
    } else {
        printf("tenant %s updated\n", t);
        show_policy(t);
    }
    return CTL_EXIT_OK;
}

static int tenant_flag(int argc, char **argv, const char *usage, const char *value)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 1), 1, 1, usage);
    const char *t = pos[0];
    arg_tenant(t);
    char k[SCHEMA_KEY_MAX];
    tenant_key(k, t);
    CMDV("HSET", k, SCHEMA_F_SUSPENDED, value);
    publish(SCHEMA_EV_TENANT, t);
    if (G.json) {
        json_kv("{", "tenant", t);
        printf(",\"suspended\":%s}\n", value[0] == '1' ? "true" : "false");
    } else {
        printf("tenant %s %s\n", t, value[0] == '1' ? "suspended (its domains answer 503)" : "resumed");
    }
    return CTL_EXIT_OK;
}

/* Reads one meter hash: -1 when absent. */
struct usage {
    int exists;
    long long in, out, req;
};

static void usage_read(const char *tenant, const char *period, struct usage *u)
{
    char k[SCHEMA_KEY_MAX];
    key_or_die(schema_key_meter(k, sizeof(k), G.prefix, tenant, strlen(tenant), period));
    const char *a[] = { "HMGET", k, SCHEMA_F_BYTES_IN, SCHEMA_F_BYTES_OUT, SCHEMA_F_REQUESTS };
    struct redis_reply *r = cmd_ok(5, a);
    long long *dst[3] = { &u->in, &u->out, &u->req };
    memset(u, 0, sizeof(*u));
    for (size_t i = 0; i < 3; i++) {
        const struct redis_reply *e = redis_reply_elem(r, i);
        size_t l = 0;
        const char *s = redis_reply_str(e, &l);
        int64_t v;
        if (s) {
            u->exists = 1;
            if (schema_u64_parse(s, l, &v) == 0)
                *dst[i] = (long long)v;
            else
                ctl_warn("%s: field %zu is not a counter", k, i);
        }
    }
    redis_sync_reply_free(r);
}

static void usage_print(const char *label, const char *period, const struct usage *u, int first)
{
    if (G.json) {
        printf("%s\"%s\":{\"period\":\"%s\",\"bytes_in\":%lld,\"bytes_out\":%lld,\"requests\":%lld}",
               first ? "" : ",", label, period, u->in, u->out, u->req);
    } else {
        printf("%-6s %-8s  bytes_in %lld  bytes_out %lld  total %lld  requests %lld\n", label, period, u->in,
               u->out, u->in + u->out, u->req);
    }
}

static int cmd_usage(int argc, char **argv)
{
    struct opt o[] = { { "--month", 1, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[1];
    need(parse_args(argc, argv, o, pos, 1), 1, 1, usage_usage);
    const char *t = pos[0];
    arg_tenant(t);
    char month[7], day[9];
    time_t now = time(NULL);
    schema_period_month(now, month);
    schema_period_day(now, day);
    int current = 1;
    if (o[0].val) {
        if (strlen(o[0].val) != 6 || !schema_period_valid(o[0].val))
            die(CTL_EXIT_USAGE, "--month must be YYYYMM");
        current = strcmp(o[0].val, month) == 0;
        snprintf(month, sizeof(month), "%s", o[0].val);
    }
    struct usage um, ud;
    usage_read(t, month, &um);
    if (current)
        usage_read(t, day, &ud);
    if (G.json) {
        json_kv("{", "tenant", t);
        printf(",");
        usage_print("month", month, &um, 1);
        if (current)
            usage_print("today", day, &ud, 0);
        printf("}\n");
    } else {
        printf("tenant %s\n", t);
        usage_print("month", month, &um, 1);
        if (current)
            usage_print("today", day, &ud, 0);
    }
    return CTL_EXIT_OK;
}

static int cmd_tenant_show(int argc, char **argv)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 1), 1, 1, usage_tenant_show);
    const char *t = pos[0];
    arg_tenant(t);
    char k[SCHEMA_KEY_MAX], month[7];
    tenant_key(k, t);
    const char *a[] = { "EXISTS", k };
    struct redis_reply *r = cmd_ok(2, a);
    int exists = redis_reply_int(r) > 0;
    redis_sync_reply_free(r);
    schema_period_month(time(NULL), month);
    struct usage um;
    usage_read(t, month, &um);
    if (G.json) {
        json_kv("{", "tenant", t);
        json_kv(",", "key", k);
        printf(",\"exists\":%s,", exists ? "true" : "false");
        show_policy(t);
        putchar(',');
        usage_print("month", month, &um, 1);
        printf("}\n");
    } else {
        printf("tenant:     %s%s\n", t, exists ? "" : "  (no policy stored: defaults)");
        show_policy(t);
        usage_print("month", month, &um, 1);
    }
    return CTL_EXIT_OK;
}

/* ----------------------------------------------------------- patterns -- */

/*
 * Checks that every capture the template names exists in the regex ($1..$99,
 * ${1}, ${name}, $$ for a dollar): the proxy would answer 502 for matching
 * hosts otherwise.  Also checks that the template reads as a backends list
 * once its captures are filled in: with no capture, or when neither "1" nor
 * "1:1" in every capture's place gives a valid list, it never can (an error);
 * when only "1:1" does, the captures must hold ports (a warning).
 * 0 / -1 with err.
 */
static int pattern_template_check(const char *regex, const char *tmpl, char *err, size_t errlen)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, 0, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR m[160];
        pcre2_get_error_message(ec, m, sizeof(m));
        snprintf(err, errlen, "regex does not compile at offset %zu: %s", (size_t)eo, (const char *)m);
        return -1;
    }
    uint32_t ncap = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &ncap);
    char sample[4096], sample_port[4096];   /* captures as "1" / as "1:1" */
    size_t o = 0, op = 0;
    unsigned refs = 0;
    int rc = 0;
    for (const char *p = tmpl; *p && rc == 0; p++) {
        if (*p != '$' || p[1] == '$') {
            p += *p == '$';
            if (o + 1 < sizeof(sample))
                sample[o++] = *p;
            if (op + 1 < sizeof(sample_port))
                sample_port[op++] = *p;
            continue;
        }
        p++;
        char name[64];
        size_t nl = 0;
        if (*p == '{') {
            const char *close = strchr(p, '}');
            if (!close || close == p + 1 || (size_t)(close - p - 1) >= sizeof(name)) {
                snprintf(err, errlen, "bad ${...} in template");
                rc = -1;
                break;
            }
            nl = (size_t)(close - p - 1);
            memcpy(name, p + 1, nl);
            p = close;
        } else if (*p >= '0' && *p <= '9') {
            name[nl++] = *p;
            if (p[1] >= '0' && p[1] <= '9')
                name[nl++] = *++p;
        } else {
            snprintf(err, errlen, "a '$' in the template must be followed by a capture number, {name} or $");
            rc = -1;
            break;
        }
        name[nl] = '\0';
        int num;
        if (strspn(name, "0123456789") == nl) {
            num = atoi(name);
            if (num < 1 || (uint32_t)num > ncap) {
                snprintf(err, errlen, "template uses $%s but the regex has %u capture group%s", name, ncap,
                         ncap == 1 ? "" : "s");
                rc = -1;
            }
        } else if (pcre2_substring_number_from_name(re, (PCRE2_SPTR)name) < 0) {
            snprintf(err, errlen, "template uses ${%s} but the regex has no such named group", name);
            rc = -1;
        }
        refs++;
        if (o + 1 < sizeof(sample))
            sample[o++] = '1';
        for (const char *f = "1:1"; *f && op + 1 < sizeof(sample_port); f++)
            sample_port[op++] = *f;
    }
    pcre2_code_free(re);
    if (rc == 0) {
        char e2[256], e3[256];
        sample[o] = '\0';
        sample_port[op] = '\0';
        if (schema_backends_check(sample, o, e2, sizeof(e2)) >= 0)
            return 0;
        if (refs == 0 || schema_backends_check(sample_port, op, e3, sizeof(e3)) < 0) {
            /* The proxy would answer 502 for every host the regex matches. */
            snprintf(err, errlen, "the template never gives a valid backends list: %.150s", e2);
            return -1;
        }
        ctl_warn("the template gives a valid backends list only if the captures hold ports: %s", e2);
    }
    return rc;
}

static int cmd_pattern_add(int argc, char **argv)
{
    struct opt o[] = { { "--first", 0, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[3];
    need(parse_args(argc, argv, o, pos, 3), 3, 3, usage_pattern_add);
    arg_tenant(pos[1]);
    char line[SCHEMA_VALUE_MAX];
    int n = schema_pattern_format(line, sizeof(line), pos[0], pos[1], pos[2]);
    char err[256] = "";
    if (n < 0) {
        struct schema_pattern_line pl;
        char tmp[SCHEMA_VALUE_MAX];
        snprintf(tmp, sizeof(tmp), "%s %s %s", pos[0], pos[1], pos[2]);
        if (schema_pattern_split(tmp, strlen(tmp), &pl, err, sizeof(err)) == 0)
            snprintf(err, sizeof(err), "the regex, tenant and template must not contain whitespace");
        die(CTL_EXIT_USAGE, "bad pattern: %s", err);
    }
    struct match_pattern *mp = match_pattern_new(line, (size_t)n, err, sizeof(err));
    if (!mp)
        die(CTL_EXIT_USAGE, "bad pattern: %s", err);
    match_pattern_free(mp);
    if (pattern_template_check(pos[0], pos[2], err, sizeof(err)) < 0)
        die(CTL_EXIT_USAGE, "bad pattern: %s", err);
    char k[SCHEMA_KEY_MAX];
    patterns_key(k);
    long long len = -1;
    for (int tries = 0; len < 0; tries++) {
        if (tries == LIST_PUSH_TRIES)
            die(CTL_EXIT_REDIS, "%s kept changing while this pattern was added: try again", k);
        CMDV("WATCH", k);
        long dup = list_find_token(k, line, token_line);
        if (dup >= 0)
            die(CTL_EXIT_USAGE, "this pattern already exists (#%ld)", dup);
        len = list_push(k, line, o[0].val != NULL);
    }
    publish(SCHEMA_EV_PATTERNS, NULL);
    if (G.json) {
        json_kv("{", "pattern", line);
        printf(",\"index\":%lld,\"count\":%lld}\n", o[0].val ? 0LL : len - 1, len);
    } else {
        printf("pattern #%lld added: %s\n", o[0].val ? 0LL : len - 1, line);
    }
    return CTL_EXIT_OK;
}

/* A pattern line's regex; a malformed line's first word, so bad data can be removed. */
static void token_pattern_regex(const char *line, const char **tok, size_t *tl)
{
    struct schema_pattern_line pl;
    if (schema_pattern_split(line, strlen(line), &pl, NULL, 0) == 0) {
        *tok = pl.regex;
        *tl = pl.regex_len;
    } else {
        token_first_word(line, tok, tl);
    }
}

static int cmd_pattern_rm(int argc, char **argv)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 1), 1, 1, usage_pattern_rm);
    char k[SCHEMA_KEY_MAX];
    patterns_key(k);
    long long removed = list_remove_token(k, pos[0], token_pattern_regex);
    if (!removed)
        die(CTL_EXIT_NOT_FOUND, "no pattern with regex %s", pos[0]);
    publish(SCHEMA_EV_PATTERNS, NULL);
    if (G.json)
        printf("{\"removed\":%lld}\n", removed);
    else
        printf("removed %lld pattern%s\n", removed, removed == 1 ? "" : "s");
    return CTL_EXIT_OK;
}

static int cmd_pattern_list(int argc, char **argv)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 0), 0, 0, usage_pattern_list);
    char k[SCHEMA_KEY_MAX];
    patterns_key(k);
    char **v;
    size_t nv = list_read_or_die(k, &v, CTL_EXIT_BAD_DATA, "is not a list");
    if (G.json)
        printf("[");
    for (size_t i = 0; i < nv; i++) {
        char err[256] = "";
        struct match_pattern *mp = match_pattern_new(v[i], strlen(v[i]), err, sizeof(err));
        struct schema_pattern_line pl;
        int split = schema_pattern_split(v[i], strlen(v[i]), &pl, NULL, 0) == 0;
        if (G.json) {
            list_item_open(i, "line", v[i]);
            if (split) {
                printf(",\"regex\":");
                json_str(pl.regex, pl.regex_len);
                printf(",\"tenant\":");
                json_str(pl.tenant, pl.tenant_len);
                printf(",\"template\":");
                json_str(pl.tmpl, pl.tmpl_len);
            }
        }
        list_item_close(i, v[i], mp ? NULL : err);
        match_pattern_free(mp);
    }
    if (G.json)
        printf("]\n");
    list_free(v, nv);
    return CTL_EXIT_OK;
}

/* -------------------------------------------------------------- paths -- */

static int cmd_path_add(int argc, char **argv)
{
    struct opt o[] = { { "--first", 0, 0, NULL, { 0 }, 0 }, { NULL, 0, 0, NULL, { 0 }, 0 } };
    const char *pos[3];
    need(parse_args(argc, argv, o, pos, 3), 3, 3, usage_path_add);
    char host[HOST_MAX + 3];
    arg_host(pos[0], host, 1);
    char line[SCHEMA_VALUE_MAX], err[256];
    int n = snprintf(line, sizeof(line), "%s %s", pos[1], pos[2]);
    if (n < 0 || (size_t)n >= sizeof(line))
        die(CTL_EXIT_USAGE, "path rule too long");
    if (strpbrk(pos[1], " \t"))
        die(CTL_EXIT_USAGE, "the prefix or regex must not contain whitespace");
    struct schema_path_line pl;
    if (schema_path_split(line, (size_t)n, &pl, err, sizeof(err)) < 0)
        die(CTL_EXIT_USAGE, "bad path rule: %s", err);
    struct match_paths *mps = match_paths_new();
    if (!mps || match_paths_add(mps, line, (size_t)n, err, sizeof(err)) < 0) {
        match_paths_free(mps);
        die(CTL_EXIT_USAGE, "bad path rule: %s", err);
    }
    match_paths_free(mps);
    char k[SCHEMA_KEY_MAX], pk[SCHEMA_KEY_MAX];
    domain_key(k, host);
    paths_key(pk, host);
    const char *ea[] = { "EXISTS", k };
    struct redis_reply *r = cmd_ok(2, ea);
    if (redis_reply_int(r) == 0)
        ctl_warn("domain %s does not exist yet: the rule applies once it does", host);
    redis_sync_reply_free(r);
    long long len = -1;
    for (int tries = 0; len < 0; tries++) {
        if (tries == LIST_PUSH_TRIES)
            die(CTL_EXIT_REDIS, "%s kept changing while this rule was added: try again", pk);
        CMDV("WATCH", pk);
        long dup = list_find_token(pk, pos[1], token_first_word);
        if (dup >= 0)
            die(CTL_EXIT_USAGE, "%s already has a rule for %s (#%ld): remove it first", host, pos[1], dup);
        len = list_push(pk, line, o[0].val != NULL);
    }
    publish(SCHEMA_EV_DOMAIN, host);
    long long idx = o[0].val ? 0 : len - 1;
    if (G.json) {
        json_kv("{", "host", host);
        json_kv(",", "rule", line);
        printf(",\"index\":%lld}\n", idx);
    } else {
        printf("path rule #%lld added to %s: %s\n", idx, host, line);
    }
    return CTL_EXIT_OK;
}

/* A path rule's prefix or ~regex: its first word after any leading blanks. */
static void token_path_match(const char *line, const char **tok, size_t *tl)
{
    line += strspn(line, " \t");
    token_first_word(line, tok, tl);
}

static int cmd_path_rm(int argc, char **argv)
{
    const char *pos[2];
    need(parse_args(argc, argv, NULL, pos, 2), 2, 2, usage_path_rm);
    char host[HOST_MAX + 3], pk[SCHEMA_KEY_MAX];
    arg_host(pos[0], host, 1);
    paths_key(pk, host);
    long long removed = list_remove_token(pk, pos[1], token_path_match);
    if (!removed)
        die(CTL_EXIT_NOT_FOUND, "%s has no path rule %s", host, pos[1]);
    publish(SCHEMA_EV_DOMAIN, host);
    if (G.json)
        printf("{\"host\":\"%s\",\"removed\":%lld}\n", host, removed);
    else
        printf("removed path rule %s from %s\n", pos[1], host);
    return CTL_EXIT_OK;
}

static int cmd_path_list(int argc, char **argv)
{
    const char *pos[1];
    need(parse_args(argc, argv, NULL, pos, 1), 1, 1, usage_path_list);
    char host[HOST_MAX + 3], pk[SCHEMA_KEY_MAX];
    arg_host(pos[0], host, 1);
    paths_key(pk, host);
    char **v;
    size_t nv = list_read_or_die(pk, &v, CTL_EXIT_BAD_DATA, "is not a list");
    if (G.json) {
        json_kv("{", "host", host);
        printf(",\"rules\":[");
    }
    for (size_t i = 0; i < nv; i++) {
        struct schema_path_line pl;
        char err[256] = "";
        int ok = schema_path_split(v[i], strlen(v[i]), &pl, err, sizeof(err)) == 0;
        if (ok) {
            struct match_paths *mps = match_paths_new();
            if (mps && match_paths_add(mps, v[i], strlen(v[i]), err, sizeof(err)) < 0)
                ok = 0;
            match_paths_free(mps);
        }
        if (G.json) {
            list_item_open(i, "rule", v[i]);
            if (ok) {
                printf(",\"type\":\"%s\",\"match\":", pl.is_regex ? "regex" : "prefix");
                json_str(pl.match, pl.match_len);
                printf(",\"backends\":");
                json_str(pl.backends, pl.backends_len);
            }
        }
        list_item_close(i, v[i], ok ? NULL : err);
    }
    if (G.json)
        printf("]}\n");
    list_free(v, nv);
    return CTL_EXIT_OK;
}

/* ---------------------------------------------------------------- main -- */

struct command {
    const char *group, *name;
    int (*fn)(int, char **);
    const char *usage;
};

static const struct command commands[] = {
    { "domain", "add", cmd_domain_add, usage_domain_add },
    { "domain", "rm", cmd_domain_rm, usage_domain_rm },
    { "domain", "show", cmd_domain_show, usage_domain_show },
    { "domain", "list", cmd_domain_list, usage_domain_list },
    { "tenant", "set", cmd_tenant_set, usage_tenant_set },
    { "tenant", "suspend", NULL, usage_tenant_suspend },
    { "tenant", "resume", NULL, usage_tenant_resume },
    { "tenant", "show", cmd_tenant_show, usage_tenant_show },
    { "usage", NULL, cmd_usage, usage_usage },
    { "pattern", "add", cmd_pattern_add, usage_pattern_add },
    { "pattern", "rm", cmd_pattern_rm, usage_pattern_rm },
    { "pattern", "list", cmd_pattern_list, usage_pattern_list },
    { "path", "add", cmd_path_add, usage_path_add },
    { "path", "rm", cmd_path_rm, usage_path_rm },
    { "path", "list", cmd_path_list, usage_path_list },
};

static void group_help(const char *group, FILE *f)
{
    fprintf(f, "tollgate-ctl %s commands:\n", group);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].group, group) == 0)
            fprintf(f, "  %s", commands[i].usage + strlen("usage: "));
}

/* Parses the global options and runs the command; returns the exit status. */
static int ctl_main(int argc, char **argv)
{
    G.url = getenv("TOLLGATE_REDIS");
    if (!G.url || !*G.url)
        G.url = CTL_DEFAULT_URL;
    G.prefix = SCHEMA_PREFIX_DEFAULT;
    G.timeout = 5;

    /* Global options, before the command. */
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
#define GOPT(name) (nl == strlen(name) && strncmp(a, name, nl) == 0)
#define GVAL() (eq ? eq + 1 : (i + 1 < argc ? argv[++i] : (die(CTL_EXIT_USAGE, "%s needs a value", a), "")))
        if (GOPT("--help") || GOPT("-h")) {
            fputs(usage_main, stdout);
            return CTL_EXIT_OK;
        } else if (GOPT("--version")) {
            printf("tollgate-ctl %s\n", PACKAGE_VERSION);
            return CTL_EXIT_OK;
        } else if (GOPT("--json")) {
            G.json = 1;
        } else if (GOPT("--redis")) {
            G.url = GVAL();
        } else if (GOPT("--key-prefix")) {
            G.prefix = GVAL();
        } else if (GOPT("--timeout")) {
            const char *v = GVAL();
            char *end;
            errno = 0;
            G.timeout = strtod(v, &end);
            /* 1 ms at least: a shorter one is a zero timeval, hiredis's "no timeout". */
            if (errno || *end || end == v || !(v[0] >= '0' && v[0] <= '9') || strpbrk(v, "xXeEpP")
                || !(G.timeout >= 0.001 && G.timeout <= 3600))
                die(CTL_EXIT_USAGE, "--timeout must be seconds (0.001 <= S <= 3600, e.g. 5 or 0.5)");
        } else {
            die(CTL_EXIT_USAGE, "unknown option %s (see --help)", a);
        }
#undef GOPT
#undef GVAL
    }
    char err[256];
    /* The proxy's own check first: a URL the proxy refuses is refused here. */
    if (cfg_check_redis_url(G.url, err, sizeof(err)) < 0)
        die(CTL_EXIT_USAGE, "bad Redis URL %s", err);
    if (redis_url_check(G.url, err, sizeof(err)) < 0)
        die(CTL_EXIT_USAGE, "%s", err);
    /* Empty is a valid key builder prefix, but tollgate refuses it: no proxy would read the keys. */
    if (!*G.prefix || !schema_prefix_valid(G.prefix))
        die(CTL_EXIT_USAGE, "--key-prefix must be 1 to %d printable ASCII characters without spaces",
            SCHEMA_PREFIX_MAX);
    if (i >= argc) {
        fputs(usage_main, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *group = argv[i++];
    int known_group = 0;
    for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
        if (strcmp(commands[c].group, group) != 0)
            continue;
        known_group = 1;
        const char *name = commands[c].name;
        if (name && (i >= argc || strcmp(argv[i], name) != 0))
            continue;
        int sub = name ? i + 1 : i;
        /* Global options may also follow the command: pull them out. */
        char **rest = calloc((size_t)(argc - sub) + 1, sizeof(char *));
        int nr = 0;
        for (int j = sub; j < argc; j++) {
            if (strcmp(argv[j], "--json") == 0)
                G.json = 1;
            else if ((strcmp(argv[j], "--redis") == 0 || strcmp(argv[j], "--key-prefix") == 0) && j + 1 < argc)
                die(CTL_EXIT_USAGE, "%s goes before the command: tollgate-ctl %s URL %s ...", argv[j], argv[j],
                    group);
            else
                rest[nr++] = argv[j];
        }
        int rc;
        if (commands[c].fn)
            rc = commands[c].fn(nr, rest);
        else
            rc = tenant_flag(nr, rest, commands[c].usage, strcmp(name, "suspend") == 0 ? "1" : "0");
        free(rest);
        redis_sync_free(G.rs);
        G.rs = NULL;
        return rc;
    }
    if (known_group) {
        if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
            group_help(group, stdout);
            return CTL_EXIT_OK;
        }
        group_help(group, stderr);
        die(CTL_EXIT_USAGE, "unknown %s command%s%s", group, i < argc ? ": " : "", i < argc ? argv[i] : "");
    }
    fputs(usage_main, stderr);
    die(CTL_EXIT_USAGE, "unknown command: %s", group);
}

int main(int argc, char **argv)
{
    return ctl_finish(ctl_main(argc, argv));
}
