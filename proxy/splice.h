/*
 * splice: moving body bytes from one socket to another through a pipe,
 * inside the kernel (splice(2)), without copying them into the process and
 * out again.  Linux only, like SO_REUSEPORT and the rest of tollgate.
 *
 * A pipe comes from a per-thread pool and goes back to it empty; one that
 * still holds bytes (a relay cut short) is closed instead, so that no
 * connection ever sees another's bytes.
 */
#ifndef TG_PROXY_SPLICE_H
#define TG_PROXY_SPLICE_H

#include <stddef.h>
#include <sys/types.h>

struct splice_pipe {
    int rd, wr;       /* the pipe's ends, non-blocking */
    size_t len;       /* bytes in the pipe */
    size_t cap;       /* the pipe's size (F_GETPIPE_SZ) */
    size_t asked;     /* the size asked for when it was made */
};

/*
 * Takes an empty pipe of size bytes (at most 1 MiB, Linux's default
 * pipe-max-size; rounded up by the kernel; smaller, but at least 64 KiB,
 * where /proc/sys/fs/pipe-max-size is lower) from the
 * thread's pool, or makes one.  0, or -1 with errno (EMFILE, ENOBUFS when
 * the kernel only gives tiny pipes): the caller then relays by copying.
 */
int splice_pipe_get(struct splice_pipe *p, size_t size);

/* Gives p back to the pool when it is empty, closes it otherwise; p->rd is -1 after. */
void splice_pipe_put(struct splice_pipe *p);

/*
 * One splice(2) of up to max bytes from the socket fd into p (no more than
 * the room p->cap - p->len).  Returns the bytes moved; 0 on EOF; -1 with
 * errno (EAGAIN: the socket is empty or the pipe full).
 */
ssize_t splice_fill(struct splice_pipe *p, int fd, size_t max);

/* One splice(2) of up to max bytes of p into the socket fd: as splice_fill. */
ssize_t splice_drain(struct splice_pipe *p, int fd, size_t max);

/*
 * After splice_fill() moved nothing (EAGAIN on a socket epoll reports
 * readable, or 0): 1 when the socket's read position is at a TCP urgent
 * (OOB) mark (SIOCATMARK), where splice(2) stops for good; the caller must
 * read on otherwise (a read steps over the mark).
 */
int splice_stalled(int fd);

/* Closes the thread's pooled pipes (at worker exit). */
void splice_thread_cleanup(void);

#endif
