/*
 * bev: socket bufferevents whose reads tollgate does itself (see bev.c).
 */
#ifndef TG_PROXY_BEV_H
#define TG_PROXY_BEV_H

#include <stddef.h>
#include <stdint.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

/* Bytes read per call at most: 64 KiB evbuffer chains, header included. */
#define BEV_READ_CHUNK (65536 - 128)
/* The first read of a client connection: request heads (16 KiB chains). */
#define BEV_READ_HEAD (16384 - 128)

/*
 * Points bev's read event at bev.c's own read callback, keeping its enabled
 * state and read timeout.  Call after bufferevent_socket_new() and after
 * anything that sets the fd again (bufferevent_socket_connect,
 * bufferevent_setfd).  Each readiness event then reads up to
 * bufferevent_get_max_single_read(bev) bytes (and no more than the read
 * high watermark allows) with one readv into the input, no ioctl, and runs
 * the read callback, or the event callback on EOF, error or timeout — what
 * libevent's own callback does, minus its 4 KiB cap and FIONREAD.
 */
void bev_own_read(struct bufferevent *bev);

/*
 * 1 when bev's read event has fired (bytes, EOF or its read timeout) and
 * its callback has not run yet: it will run later in this loop iteration.
 * A bufferevent handed to new callbacks meanwhile would get that event --
 * a read timeout armed for an earlier exchange, say -- as its own.  No
 * system call.
 */
int bev_read_fired(const struct bufferevent *bev);

/*
 * Enables reading unless it is enabled already: bufferevent_enable() on an
 * enabled bufferevent still re-adds its read event (and timer).
 */
void bev_enable_read(struct bufferevent *bev);

/*
 * One readv of up to max bytes from bev's socket into its input buffer
 * (reserved space, no copy).  Returns the bytes read (0 on EAGAIN); sets *ev
 * to BEV_EVENT_EOF or BEV_EVENT_ERROR (with BEV_EVENT_READING) when the
 * socket says so, else 0.  Calls no callback.
 */
size_t bev_read(struct bufferevent *bev, size_t max, short *ev);

/*
 * Writes what bev's output holds (up to BEV_WRITE_IOV pieces) with one
 * send(2), or writev(2) for several pieces, and drains what the socket
 * took (the output's callbacks see it as the bufferevent's own write).
 * Returns 0 (EAGAIN included: what is left stays), or -1 with errno on a
 * socket error.  Calls no bufferevent callback.
 */
#define BEV_WRITE_IOV 64
int bev_write(struct bufferevent *bev);

/*
 * Throws away what bev's output holds (its peer will take no more).  A
 * socket bufferevent's output is frozen at its start -- only its own write
 * may drain it -- so a plain evbuffer_drain() would do nothing.
 */
void bev_drop_output(struct bufferevent *bev);
/*
 * After the read callback's own read came back full (the socket probably
 * holds more), reads on until a short read, limit bytes buffered or
 * BEV_GATHER_ROUNDS reads (one busy connection cannot starve the others),
 * so that one relay pass and one write move it all.  Returns the event
 * bev_read() met (the caller relays first, then handles it), else 0.
 */
#define BEV_GATHER_ROUNDS 4
short bev_gather(struct bufferevent *bev, size_t limit);

/*
 * Points bev's read event (which = EV_READ) or write event (EV_WRITE) at
 * fn(fd, what, bev) instead of the bufferevent's own reading or writing,
 * until bev_undivert().  Enabling, disabling and timeouts stay the
 * bufferevent's (bufferevent_enable(), bufferevent_set_timeouts()); only
 * the callback changes, with no system call.  fn's argument stays the
 * bufferevent (its callbacks' cbarg is at hand through bufferevent_getcb()),
 * because libevent hands that argument to its finalizer when the
 * bufferevent is freed: a diverted bufferevent may be freed.  For relays
 * that move bytes past the buffers (splice): they must stay empty meanwhile.
 */
void bev_divert(struct bufferevent *bev, short which, event_callback_fn fn);
/* Gives the event back to the bufferevent. */
void bev_undivert(struct bufferevent *bev, short which);

/*
 * 1 when the peer of bev's TCP socket has acknowledged bytes since *mark
 * was taken (TCP_INFO's tcpi_bytes_acked), 0 when not or when it cannot be
 * told; takes the mark anew either way.  For a write timeout: Linux wakes a
 * writer only once a third or so of its send buffer is free, and the
 * buffer autotunes to megabytes, so a peer that reads steadily but slowly
 * may leave the socket unwritable for longer than any timeout -- bytes
 * moving all the while.  Called on timeouts only, never per read or write.
 */
int bev_peer_acked_more(struct bufferevent *bev, uint64_t *mark);

#endif
