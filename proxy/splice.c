/*
 * splice: socket -> pipe -> socket relaying in the kernel.
 *
 * A body relayed through the process costs two copies per byte: the read
 * copies it out of the receiving socket, the write copies it into the
 * sending one.  splice(2) moves page references instead: from a TCP socket
 * into a pipe (tcp_splice_read) and from the pipe into a TCP socket
 * (MSG_SPLICE_PAGES), so a large body never touches user memory.  That is
 * most of what a proxy spends on a large response (docs/benchmarks.md).
 *
 * Ownership: the pool owns idle pipes; a caller owns a pipe between
 * splice_pipe_get() and splice_pipe_put().
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/splice.h"

/* Idle pipes kept per thread: two descriptors and no memory each. */
#define SPLICE_PIPE_MIN 65536   /* a smaller pipe is not worth splicing through */
#define SPLICE_PIPE_MAX (1024 * 1024)   /* Linux's default pipe-max-size for unprivileged users */
#define POOL_MAX 64

static __thread struct {
    int rd, wr;
    size_t cap, asked;
} pool[POOL_MAX];
static __thread int pool_n;

static void pipe_close(struct splice_pipe *p)
{
    close(p->rd);
    close(p->wr);
}

static int pipe_size(struct splice_pipe *p, size_t size)
{
    int got = fcntl(p->wr, F_SETPIPE_SZ, (int)size);
    if (got < 0)
        got = fcntl(p->wr, F_GETPIPE_SZ);   /* over /proc/sys/fs/pipe-max-size: see below */
    if (got <= 0)
        return -1;
    if ((size_t)got < size && got < SPLICE_PIPE_MIN) {
        /* Over the user's pipe-buffer allowance (pipe-user-pages-soft) the
         * kernel hands out tiny pipes: splicing through one would cost more
         * system calls than copying.  (A pipe-max-size set below size only
         * makes the pipe smaller.) */
        errno = ENOBUFS;
        return -1;
    }
    p->cap = (size_t)got;
    p->asked = size;
    return 0;
}

int splice_pipe_get(struct splice_pipe *p, size_t size)
{
    if (size > SPLICE_PIPE_MAX)
        size = SPLICE_PIPE_MAX;
    p->len = 0;
    if (pool_n > 0) {
        pool_n--;
        p->rd = pool[pool_n].rd;
        p->wr = pool[pool_n].wr;
        p->cap = pool[pool_n].cap;
        p->asked = pool[pool_n].asked;
        if (p->asked == size || pipe_size(p, size) == 0)
            return 0;
        pipe_close(p);
        p->rd = -1;
        return -1;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        p->rd = -1;
        return -1;
    }
    p->rd = fds[0];
    p->wr = fds[1];
    if (pipe_size(p, size) != 0) {
        pipe_close(p);
        p->rd = -1;
        return -1;
    }
    return 0;
}

void splice_pipe_put(struct splice_pipe *p)
{
    if (p->rd < 0)
        return;
    if (p->len == 0 && pool_n < POOL_MAX) {
        pool[pool_n].rd = p->rd;
        pool[pool_n].wr = p->wr;
        pool[pool_n].cap = p->cap;
        pool[pool_n].asked = p->asked;
        pool_n++;
    } else {
        pipe_close(p);
    }
    p->rd = p->wr = -1;
    p->len = 0;
}

ssize_t splice_fill(struct splice_pipe *p, int fd, size_t max)
{
    size_t room = p->cap > p->len ? p->cap - p->len : 0;
    if (max > room)
        max = room;
    if (max == 0) {
        errno = EAGAIN;
        return -1;
    }
    ssize_t n = splice(fd, NULL, p->wr, NULL, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0)
        p->len += (size_t)n;
    return n;
}

ssize_t splice_drain(struct splice_pipe *p, int fd, size_t max)
{
    if (max > p->len)
        max = p->len;
    if (max == 0) {
        errno = EAGAIN;
        return -1;
    }
    ssize_t n = splice(p->rd, NULL, fd, NULL, max, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0)
        p->len -= (size_t)n;
    return n;
}

int splice_stalled(int fd)
{
    int at = 0;
    return ioctl(fd, SIOCATMARK, &at) == 0 && at;
}

void splice_thread_cleanup(void)
{
    while (pool_n > 0) {
        pool_n--;
        close(pool[pool_n].rd);
        close(pool[pool_n].wr);
    }
}
