/*
 * clockshift: an LD_PRELOAD shim for end-to-end tests that need the wall
 * clock somewhere else (a UTC midnight, a month's end) without waiting for
 * it.  tests/e2e/test_metering.py compiles it with `cc -shared -fPIC` into a
 * temp dir (the test is skipped when no compiler is there).
 *
 * Every wall-clock read is moved TG_SHIFT_NS nanoseconds forward (negative:
 * back): time(), gettimeofday(), clock_gettime(CLOCK_REALTIME and
 * CLOCK_REALTIME_COARSE).  The monotonic clocks are left alone, so timers
 * behave as usual.  TG_COARSE_LAG_MS (default 0) makes the coarse clocks,
 * time() and CLOCK_REALTIME_COARSE, lag the precise one by that many
 * milliseconds: glibc's time() reads the kernel's coarse clock, which lags by
 * up to one tick (1-10 ms); a larger lag makes a test of code that must not
 * rely on time() at a second's edge deterministic instead of racy.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long env_ll(const char *name)
{
    const char *e = getenv(name);
    return e ? strtoll(e, NULL, 10) : 0;
}

static long long shift_ns(void)
{
    static int done;
    static long long v;
    if (!done) {
        v = env_ll("TG_SHIFT_NS");
        done = 1;
    }
    return v;
}

static long long lag_ns(void)
{
    static int done;
    static long long v;
    if (!done) {
        v = env_ll("TG_COARSE_LAG_MS") * 1000000LL;
        done = 1;
    }
    return v;
}

static int real_clock_gettime(clockid_t c, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real)
        real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    return real(c, ts);
}

/* The shifted precise wall clock in ns, minus lag. */
static long long wall_ns(long long lag)
{
    struct timespec ts;
    real_clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec + shift_ns() - lag;
}

static void to_timespec(long long ns, struct timespec *ts)
{
    long long s = ns / 1000000000LL, r = ns % 1000000000LL;
    if (r < 0) {
        r += 1000000000LL;
        s--;
    }
    ts->tv_sec = (time_t)s;
    ts->tv_nsec = (long)r;
}

time_t time(time_t *t)
{
    struct timespec ts;
    to_timespec(wall_ns(lag_ns()), &ts);
    if (t)
        *t = ts.tv_sec;
    return ts.tv_sec;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
    (void)tz;
    struct timespec ts;
    to_timespec(wall_ns(0), &ts);
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

int clock_gettime(clockid_t c, struct timespec *ts)
{
    if (c == CLOCK_REALTIME) {
        to_timespec(wall_ns(0), ts);
        return 0;
    }
    if (c == CLOCK_REALTIME_COARSE) {
        to_timespec(wall_ns(lag_ns()), ts);
        return 0;
    }
    return real_clock_gettime(c, ts);
}
