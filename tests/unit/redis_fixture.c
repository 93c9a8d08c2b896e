/*
 * redis_fixture: starts and stops the redis-server of the unit tests; see
 * redis_fixture.h.  Readiness is a PING answered over TCP (a server with
 * requirepass answers -NOAUTH, which is an answer too).
 */
#include "tests/unit/redis_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

const char *rfx_server_path(void)
{
    static char found[512];
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s:/usr/bin:/usr/local/bin:/usr/sbin", path ? path : "");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(found, sizeof(found), "%s/redis-server", d);
        if (access(found, X_OK) == 0)
            return found;
    }
    return NULL;
}

int rfx_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static double rfx_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 1 when something on port answers a PING (is really serving, not just listening). */
static int rfx_answers(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (ok) {
        struct timeval tv = { 1, 0 };
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char b[64];
        ok = write(fd, "PING\r\n", 6) == 6 && read(fd, b, sizeof(b)) > 0;
    }
    close(fd);
    return ok;
}

int rfx_start(struct rfx_srv *s, int with_unix)
{
    const char *bin = rfx_server_path();
    if (!bin)
        return 0;
    if (!s->port && (s->port = rfx_free_port()) < 0) {
        s->port = 0;
        fprintf(stderr, "redis_fixture: no free port\n");
        return -1;
    }
    if (with_unix && !s->dir[0]) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/tg-redis-XXXXXX");
        if (!mkdtemp(s->dir)) {
            s->dir[0] = '\0';
            fprintf(stderr, "redis_fixture: mkdtemp failed\n");
            return -1;
        }
        snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
    }
    snprintf(s->url, sizeof(s->url), "redis://127.0.0.1:%d", s->port);
    char portbuf[16];
    snprintf(portbuf, sizeof(portbuf), "%d", s->port);
    const char *argv[24];
    int n = 0;
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = portbuf;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = "/tmp";
    if (s->debug_command) {
        argv[n++] = "--enable-debug-command";
        argv[n++] = "local";
    }
    if (s->pass[0]) {
        argv[n++] = "--requirepass";
        argv[n++] = s->pass;
    }
    if (with_unix) {
        argv[n++] = "--unixsocket";
        argv[n++] = s->sock;
        argv[n++] = "--unixsocketperm";
        argv[n++] = "700";
    }
    argv[n] = NULL;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        perror("redis_fixture: fork");
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, 1);
            dup2(dn, 2);
        }
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    double end = rfx_now() + 10;
    while (!rfx_answers(s->port)) {
        int st;
        if (waitpid(pid, &st, WNOHANG) != 0) {
            s->pid = 0;
            fprintf(stderr, "redis_fixture: redis-server exited at start (port %d)\n", s->port);
            return -1;
        }
        if (rfx_now() >= end) {
            rfx_kill(s);
            fprintf(stderr, "redis_fixture: redis-server did not start on port %d\n", s->port);
            return -1;
        }
        usleep(20000);
    }
    return 1;
}

void rfx_kill(struct rfx_srv *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGCONT);
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

void rfx_stop(struct rfx_srv *s)
{
    rfx_kill(s);
    if (s->sock[0])
        unlink(s->sock);
    if (s->dir[0])
        rmdir(s->dir);
}
