/*
 * log: the error log and the access log.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2) (writev for access lines), so lines from different threads never
 * interleave: writes to an O_APPEND file are atomic with respect to each
 * other, and a line is capped at PIPE_BUF bytes so writes to a pipe are too.
 * No lock on this path.
 *
 * File descriptors stay stable for the life of the process: the first
 * log_open()/log_access_open() takes a private descriptor number, and later
 * opens and log_reopen() dup2() the new file onto that number.  A thread that
 * is writing while the main thread reopens writes either to the old file or
 * to the new one, never to a closed or recycled descriptor.  That holds for
 * a new path as for the same one (a SIGHUP reload that moves a log calls
 * log_open()/log_access_open() again), and for an access log turned off,
 * whose descriptor then points at /dev/null.
 *
 * Control bytes in messages (from clients, backends, Redis) are escaped as
 * \xHH so that a message cannot forge a log line.
 */
#include <stddef.h>   /* log.h uses size_t without including it */

#include "proxy/log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX PIPE_BUF          /* 4096 on Linux: atomic pipe writes */
#define RL_SLOTS 128                   /* rate-limit table entries */
#define RL_PROBE 8                     /* slots probed per key */
#define RL_INTERVAL_NS (60ull * 1000000000ull)

static int err_fd = STDERR_FILENO;     /* stable once opened; see the file header */
static int err_level = LOG_INFO;
static int err_private;                /* err_fd is ours (not 2) */
static int access_fd = -1;
static int access_on;
static char *err_path;                 /* NULL = stderr */
static char *access_path;              /* NULL = off, "-" = stderr */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;

struct rl_slot {
    uint64_t hash;       /* 0 = empty */
    uint64_t last_ns;    /* CLOCK_MONOTONIC of the last logged message */
    unsigned suppressed; /* messages dropped since */
};
static struct rl_slot rl_table[RL_SLOTS];
static pthread_mutex_t rl_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_name(int level)
{
    switch (level) {
    case LOG_EMERG: case LOG_ALERT: case LOG_CRIT: case LOG_ERR: return "err";
    case LOG_WARNING: return "warn";
    case LOG_NOTICE: return "notice";
    case LOG_INFO: return "info";
    default: return "debug";
    }
}

int log_level_parse(const char *s)
{
    static const struct { const char *name; int level; } names[] = {
        { "err", LOG_ERR }, { "error", LOG_ERR },
        { "warn", LOG_WARNING }, { "warning", LOG_WARNING },
        { "notice", LOG_NOTICE }, { "info", LOG_INFO }, { "debug", LOG_DEBUG },
    };
    size_t i;
    if (!s)
        return -1;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].level;
    return -1;
}

void log_set_level(int level)
{
    if (level < LOG_ERR)
        level = LOG_ERR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    __atomic_store_n(&err_level, level, __ATOMIC_RELAXED);
}

int log_level_enabled(int level)
{
    return level <= __atomic_load_n(&err_level, __ATOMIC_RELAXED);
}

/* Opens path for appending; -1 with errno on failure. */
static int open_append(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
}

/*
 * Points the stable descriptor *slot at newfd (consumed).  The first time,
 * newfd itself becomes the slot; afterwards it is dup2()ed onto it.
 */
static int install_fd(int *slot, int *is_private, int newfd)
{
    if (!*is_private) {
        __atomic_store_n(slot, newfd, __ATOMIC_RELEASE);
        *is_private = 1;
        return 0;
    }
    if (newfd == *slot)
        return 0;
    if (dup2(newfd, *slot) < 0) {
        int e = errno;
        close(newfd);
        errno = e;
        return -1;
    }
    close(newfd);
    return 0;
}

/* A descriptor for "stderr" that we may later dup2 over without touching fd 2. */
static int dup_stderr(void)
{
    return fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
}

int log_open(const char *path, int level)
{
    int fd, rc = -1;
    char *np = NULL;

    if (path && strcmp(path, "-") == 0)
        path = NULL;
    if (path && !(np = strdup(path)))
        return -1;
    pthread_mutex_lock(&open_lock);
    fd = path ? open_append(path) : (err_private ? dup_stderr() : STDERR_FILENO);
    if (fd >= 0) {
        if (fd == STDERR_FILENO) {
            rc = 0;   /* never made private: keep writing to fd 2 directly */
        } else {
            rc = install_fd(&err_fd, &err_private, fd);
        }
    }
    if (rc == 0) {
        free(err_path);
        err_path = np;
        np = NULL;
        log_set_level(level);
    }
    pthread_mutex_unlock(&open_lock);
    free(np);
    return rc;
}

static int access_private;

int log_access_open(const char *path)
{
    int fd, rc = 0;
    char *np = NULL;

    if (path && !(np = strdup(path)))
        return -1;
    pthread_mutex_lock(&open_lock);
    if (!path) {
        __atomic_store_n(&access_on, 0, __ATOMIC_RELEASE);
        /* A worker that saw access_on just before may still write one
         * line: the descriptor stays valid, but no longer holds the old
         * file open (a rotated-away file's space is freed). */
        if (access_private) {
            int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (nul >= 0)
                install_fd(&access_fd, &access_private, nul);
        }
    } else {
        fd = strcmp(path, "-") == 0 ? dup_stderr() : open_append(path);
        rc = fd < 0 ? -1 : install_fd(&access_fd, &access_private, fd);
        if (rc == 0)
            __atomic_store_n(&access_on, 1, __ATOMIC_RELEASE);
    }
    if (rc == 0) {
        free(access_path);
        access_path = np;
        np = NULL;
    }
    pthread_mutex_unlock(&open_lock);
    free(np);
    return rc;
}

void log_reopen(void)
{
    char failed[2][256];
    int nfailed = 0, i;

    pthread_mutex_lock(&open_lock);
    if (err_path) {
        int fd = open_append(err_path);
        if (fd < 0 || install_fd(&err_fd, &err_private, fd) < 0)
            snprintf(failed[nfailed++], sizeof(failed[0]), "error log %.200s: %s", err_path,
                     strerror(errno));
    }
    if (access_path && strcmp(access_path, "-") != 0) {
        int fd = open_append(access_path);
        if (fd < 0 || install_fd(&access_fd, &access_private, fd) < 0)
            snprintf(failed[nfailed++], sizeof(failed[0]), "access log %.200s: %s", access_path,
                     strerror(errno));
    }
    pthread_mutex_unlock(&open_lock);
    for (i = 0; i < nfailed; i++)
        log_err("%s: cannot reopen %s; still writing to the old file", __func__, failed[i]);
}

/* Writes all of buf to fd in (normally) one call. */
static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return;   /* nowhere left to report it */
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* "2026-11-25T22:00:00.123Z"; returns its length. */
static size_t format_time(char *buf, size_t size)
{
    struct timespec ts;
    struct tm tm;
    size_t n;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return n;
}

/*
 * Formats one error-log line into line[LOG_LINE_MAX] and returns its length
 * (newline included).  Too long messages end in "...".
 */
static size_t format_line(char *line, int level, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static size_t format_line(char *line, int level, const char *fmt, va_list ap)
{
    char msg[LOG_LINE_MAX];
    size_t o, i, len;
    int n, truncated;

    o = format_time(line, 40);
    o += (size_t)snprintf(line + o, 24, " [%s] ", level_name(level));
    n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (n < 0)
        n = 0;
    len = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
    truncated = (size_t)n >= sizeof(msg);
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (o + 8 >= LOG_LINE_MAX) {   /* room for an escape, "..." and '\n' */
            truncated = 1;
            break;
        }
        if (c < 0x20 || c == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            line[o++] = '\\';
            line[o++] = 'x';
            line[o++] = hex[c >> 4];
            line[o++] = hex[c & 15];
        } else {
            line[o++] = (char)c;
        }
    }
    if (truncated) {
        memcpy(line + o, "...", 3);
        o += 3;
    }
    line[o++] = '\n';
    return o;
}

static void log_vmsg(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void log_vmsg(int level, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX + 8];
    size_t len = format_line(line, level, fmt, ap);
    write_all(__atomic_load_n(&err_fd, __ATOMIC_ACQUIRE), line, len);
}

void log_msg(int level, const char *fmt, ...)
{
    va_list ap;
    if (!log_level_enabled(level))
        return;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h ? h : 1;   /* 0 marks an empty slot */
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int log_err_ratelimited(const char *key, const char *fmt, ...)
{
    uint64_t h = fnv1a(key ? key : ""), now = now_ns();
    struct rl_slot *slot = NULL, *oldest = NULL;
    unsigned suppressed = 0, i;
    va_list ap;

    pthread_mutex_lock(&rl_lock);
    for (i = 0; i < RL_PROBE; i++) {
        struct rl_slot *s = &rl_table[(h + i) % RL_SLOTS];
        if (s->hash == h) {
            slot = s;
            break;
        }
        /* Prefer an empty slot, else the one logged longest ago. */
        if (!oldest || (oldest->hash != 0 && (s->hash == 0 || s->last_ns < oldest->last_ns)))
            oldest = s;
    }
    if (slot && now - slot->last_ns < RL_INTERVAL_NS) {
        slot->suppressed++;
        pthread_mutex_unlock(&rl_lock);
        return 0;
    }
    if (slot) {
        suppressed = slot->suppressed;
    } else {
        /* Evicting the stalest key at worst lets that key log early once. */
        slot = oldest;
        slot->hash = h;
    }
    slot->last_ns = now;
    slot->suppressed = 0;
    pthread_mutex_unlock(&rl_lock);

    if (!log_level_enabled(LOG_ERR))
        return 0;
    va_start(ap, fmt);
    log_vmsg(LOG_ERR, fmt, ap);
    va_end(ap);
    if (suppressed)
        log_msg(LOG_ERR, "(%u similar messages suppressed in the last minute)", suppressed);
    return 1;
}

int log_access_enabled(void)
{
    return __atomic_load_n(&access_on, __ATOMIC_ACQUIRE);
}

void log_access_line(const char *line, size_t len)
{
    struct iovec iov[2];
    int fd, n = 1;
    ssize_t w;

    if (!log_access_enabled())
        return;
    fd = __atomic_load_n(&access_fd, __ATOMIC_ACQUIRE);
    iov[0].iov_base = (void *)line;
    iov[0].iov_len = len;
    if (len == 0 || line[len - 1] != '\n') {
        iov[1].iov_base = (void *)"\n";
        iov[1].iov_len = 1;
        n = 2;
    }
    do {
        w = writev(fd, iov, n);
    } while (w < 0 && errno == EINTR);
    /* A short write (disk full) is not retried: a torn access line is better than a blocked worker. */
}
