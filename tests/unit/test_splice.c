/*
 * tests/unit/test_splice.c: unit tests for proxy/splice.c, socket -> pipe ->
 * socket relaying in the kernel.
 *
 * Each test uses real TCP connections on loopback, the sockets splice(2)
 * sees in the proxy: "up" is the proxy's end of a backend connection (its
 * peer writes the body), "down" the proxy's end of a client connection
 * (its peer reads what was relayed).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/splice.h"
#include "tests/unit/tests.h"

/* A connected TCP pair on loopback: *a non-blocking (the proxy's end), *b blocking. */
static void tcp_pair(int *a, int *b)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(l, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(l, 1), 0);
    socklen_t len = sizeof(sa);
    ck_assert_int_eq(getsockname(l, (struct sockaddr *)&sa, &len), 0);
    *b = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(*b, (struct sockaddr *)&sa, sizeof(sa)), 0);
    *a = accept(l, NULL, NULL);
    ck_assert_int_ge(*a, 0);
    fcntl(*a, F_SETFL, O_NONBLOCK);
    close(l);
}

static unsigned char byte_at(size_t i)
{
    return (unsigned char)(i * 7 + i / 251);
}

static void send_pattern(int fd, size_t off, size_t n)
{
    unsigned char buf[4096];
    while (n > 0) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        for (size_t i = 0; i < k; i++)
            buf[i] = byte_at(off + i);
        ssize_t w = write(fd, buf, k);
        ck_assert_int_gt(w, 0);
        off += (size_t)w;
        n -= (size_t)w;
    }
}

/* Reads exactly n bytes from the blocking fd and checks they are the pattern from off. */
static void expect_pattern(int fd, size_t off, size_t n)
{
    unsigned char buf[4096];
    while (n > 0) {
        ssize_t r = read(fd, buf, n < sizeof(buf) ? n : sizeof(buf));
        ck_assert_int_gt(r, 0);
        for (ssize_t i = 0; i < r; i++)
            ck_assert_uint_eq(buf[i], byte_at(off + (size_t)i));
        off += (size_t)r;
        n -= (size_t)r;
    }
}

static int fd_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1;
}

START_TEST(fill_then_drain_relays_every_byte_in_order)
{
    int up, up_peer, down, down_peer;
    tcp_pair(&up, &up_peer);
    tcp_pair(&down, &down_peer);
    struct splice_pipe p;
    ck_assert_int_eq(splice_pipe_get(&p, 65536), 0);
    const size_t total = 1000000;
    size_t sent = 0, relayed = 0;
    while (relayed < total) {
        if (sent < total) {
            size_t k = total - sent < 100000 ? total - sent : 100000;
            send_pattern(up_peer, sent, k);
            sent += k;
        }
        ssize_t n;
        while ((n = splice_fill(&p, up, total)) > 0) {
            ssize_t m = splice_drain(&p, down, p.len);
            ck_assert_int_gt(m, 0);
            expect_pattern(down_peer, relayed, (size_t)m);
            relayed += (size_t)m;
        }
        ck_assert(n < 0 && errno == EAGAIN);
        while (p.len > 0) {
            ssize_t m = splice_drain(&p, down, p.len);
            ck_assert_int_gt(m, 0);
            expect_pattern(down_peer, relayed, (size_t)m);
            relayed += (size_t)m;
        }
    }
    ck_assert_uint_eq(relayed, total);
    splice_pipe_put(&p);
    close(up); close(up_peer); close(down); close(down_peer);
    splice_thread_cleanup();
}
END_TEST

START_TEST(fill_takes_no_more_than_max_and_the_room)
{
    int up, up_peer;
    tcp_pair(&up, &up_peer);
    struct splice_pipe p;
    ck_assert_int_eq(splice_pipe_get(&p, 65536), 0);
    send_pattern(up_peer, 0, 300000);
    usleep(20000);
    ck_assert_int_eq(splice_fill(&p, up, 1000), 1000);
    ck_assert_uint_eq(p.len, 1000);
    /* fill to the pipe's size, never past it */
    ssize_t n;
    while ((n = splice_fill(&p, up, SIZE_MAX)) > 0)
        ck_assert_uint_le(p.len, p.cap);
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_uint_gt(p.len, 1000);
    splice_pipe_put(&p);   /* not empty: closed, not pooled */
    close(up); close(up_peer);
    splice_thread_cleanup();
}
END_TEST

START_TEST(fill_says_eagain_on_an_empty_socket_and_zero_at_eof)
{
    int up, up_peer;
    tcp_pair(&up, &up_peer);
    struct splice_pipe p;
    ck_assert_int_eq(splice_pipe_get(&p, 65536), 0);
    errno = 0;
    ck_assert_int_eq(splice_fill(&p, up, 4096), -1);
    ck_assert_int_eq(errno, EAGAIN);
    send_pattern(up_peer, 0, 10);
    close(up_peer);
    usleep(20000);
    ck_assert_int_eq(splice_fill(&p, up, 4096), 10);
    ck_assert_int_eq(splice_fill(&p, up, 4096), 0);
    /* draining an empty pipe moves nothing */
    struct splice_pipe q;
    ck_assert_int_eq(splice_pipe_get(&q, 65536), 0);
    ck_assert_int_eq(splice_drain(&q, up, 100), -1);
    ck_assert_int_eq(errno, EAGAIN);
    splice_pipe_put(&q);
    splice_pipe_put(&p);
    close(up);
    splice_thread_cleanup();
}
END_TEST

START_TEST(an_urgent_mark_stalls_splice_and_is_told_apart_from_an_empty_socket)
{
    int up, up_peer;
    tcp_pair(&up, &up_peer);
    struct splice_pipe p;
    ck_assert_int_eq(splice_pipe_get(&p, 65536), 0);
    ck_assert_int_eq(splice_stalled(up), 0);   /* empty socket */
    ck_assert_int_eq(write(up_peer, "abc", 3), 3);
    ck_assert_int_eq(send(up_peer, "X", 1, MSG_OOB), 1);
    ck_assert_int_eq(write(up_peer, "def", 3), 3);
    usleep(20000);
    ck_assert_int_eq(splice_fill(&p, up, 100), 3);      /* up to the mark */
    ck_assert_int_eq(splice_fill(&p, up, 100), -1);     /* and never past it */
    ck_assert_int_eq(errno, EAGAIN);
    ck_assert_int_eq(splice_stalled(up), 1);
    char buf[8];
    ck_assert_int_eq(read(up, buf, sizeof(buf)), 3);    /* a read steps over it */
    ck_assert_int_eq(memcmp(buf, "def", 3), 0);
    ck_assert_int_eq(splice_stalled(up), 0);
    splice_pipe_put(&p);   /* closed with its 3 bytes */
    close(up); close(up_peer);
    splice_thread_cleanup();
}
END_TEST

START_TEST(empty_pipes_are_pooled_and_pipes_with_bytes_are_closed)
{
    struct splice_pipe a, b;
    ck_assert_int_eq(splice_pipe_get(&a, 131072), 0);
    ck_assert_uint_ge(a.cap, 131072);
    int rd = a.rd, wr = a.wr;
    splice_pipe_put(&a);
    ck_assert_int_eq(a.rd, -1);
    ck_assert(fd_open(rd) && fd_open(wr));
    /* the same pipe comes back, still of the size asked */
    ck_assert_int_eq(splice_pipe_get(&b, 131072), 0);
    ck_assert_int_eq(b.rd, rd);
    ck_assert_int_eq(b.wr, wr);
    ck_assert_uint_ge(b.cap, 131072);
    /* bytes left in it (a relay cut short): closed, never handed to another */
    ck_assert_int_eq(write(b.wr, "left", 4), 4);
    b.len = 4;
    splice_pipe_put(&b);
    ck_assert(!fd_open(rd) && !fd_open(wr));
    /* a pooled pipe asked for at another size is resized */
    ck_assert_int_eq(splice_pipe_get(&a, 65536), 0);
    splice_pipe_put(&a);
    ck_assert_int_eq(splice_pipe_get(&b, 262144), 0);
    ck_assert_uint_ge(b.cap, 262144);
    splice_pipe_put(&b);
    splice_thread_cleanup();
    ck_assert(!fd_open(b.rd));
}
END_TEST

START_TEST(a_pipe_asked_over_one_mebibyte_gets_one_mebibyte)
{
    /* A large buffer-size asks for more than an unprivileged process may
     * have (pipe-max-size, 1 MiB by default): the pipe is 1 MiB, neither the
     * 64 KiB a refused resize leaves nor more (root could have more). */
    long max = 0;
    FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
    if (f) {
        if (fscanf(f, "%ld", &max) != 1)
            max = 0;
        fclose(f);
    }
    struct splice_pipe p;
    ck_assert_int_eq(splice_pipe_get(&p, 8u << 20), 0);
    if (max >= 1L << 20)
        ck_assert_uint_eq(p.cap, 1u << 20);
    else
        ck_assert_uint_le(p.cap, 1u << 20);
    ck_assert_uint_eq((size_t)fcntl(p.wr, F_GETPIPE_SZ), p.cap);
    splice_pipe_put(&p);
    splice_thread_cleanup();
}
END_TEST

Suite *splice_suite(void)
{
    Suite *s = suite_create("splice");
    TCase *tc = tcase_create("pipes");
    tcase_add_test(tc, fill_then_drain_relays_every_byte_in_order);
    tcase_add_test(tc, fill_takes_no_more_than_max_and_the_room);
    tcase_add_test(tc, fill_says_eagain_on_an_empty_socket_and_zero_at_eof);
    tcase_add_test(tc, an_urgent_mark_stalls_splice_and_is_told_apart_from_an_empty_socket);
    tcase_add_test(tc, empty_pipes_are_pooled_and_pipes_with_bytes_are_closed);
    tcase_add_test(tc, a_pipe_asked_over_one_mebibyte_gets_one_mebibyte);
    suite_add_tcase(s, tc);
    return s;
}
