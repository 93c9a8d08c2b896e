/*
 * redis_fixture: the redis-server that the unit tests needing Redis start on
 * a free loopback port (optionally with a unix socket and a password), and
 * stop.  One copy for test_redis.c, test_routing.c and test_meter.c.
 *
 * The server dies with the thread that started it (PR_SET_PDEATHSIG), so an
 * assertion failing mid-test leaves no process behind.  Nothing here calls a
 * Check assertion: rfx_start is also safe in an unchecked fixture.
 */
#ifndef TG_TESTS_REDIS_FIXTURE_H
#define TG_TESTS_REDIS_FIXTURE_H

#include <sys/types.h>

/* A redis-server process; zero-initialise, set the options, then rfx_start. */
struct rfx_srv {
    pid_t pid;             /* > 0 while running */
    int port;              /* chosen by rfx_start when 0; kept across restarts */
    int debug_command;     /* option: --enable-debug-command local (DEBUG SLEEP ...) */
    char pass[32];         /* option: --requirepass when set */
    char sock[108];        /* unix socket path (with_unix) */
    char dir[64];          /* its temporary directory */
    char url[64];          /* "redis://127.0.0.1:<port>" once started */
};

/* The redis-server binary found in PATH (or /usr/bin, /usr/local/bin, /usr/sbin); NULL when absent. */
const char *rfx_server_path(void);

/* A free TCP port on 127.0.0.1, or -1. */
int rfx_free_port(void);

/*
 * Starts redis-server on s->port (on a free one when 0) with no persistence,
 * and with a unix socket under a fresh /tmp directory when with_unix.  Waits
 * up to 10 s until it answers a PING.  Returns 1 when running, 0 when
 * redis-server is not installed, -1 when it did not start (message on stderr;
 * the process is killed).
 */
int rfx_start(struct rfx_srv *s, int with_unix);

/* Kills the server (even a SIGSTOP'd one) and reaps it; keeps port and socket for a restart. */
void rfx_kill(struct rfx_srv *s);

/* rfx_kill, then removes the unix socket and its directory. */
void rfx_stop(struct rfx_srv *s);

#endif
