/*
 * conn: one client connection and its HTTP/1.1 state machine.  It reads a
 * request head, asks routing where it goes, asks the meter whether the tenant
 * may pass, relays the request to a backend and the response back, streaming
 * bodies both ways under watermarks, and switches to a two-way tunnel after
 * an accepted Upgrade.  The connection owns everything hanging off it and
 * has one teardown path (conn_close).
 */
#ifndef TG_CONN_H
#define TG_CONN_H

#include <sys/socket.h>

struct worker;
struct conn;

/* Takes ownership of an accepted socket fd. */
void conn_accept(struct worker *w, int fd, const struct sockaddr *sa, socklen_t salen);

/*
 * Graceful stop of the calling worker's connections: an idle one closes now
 * (unless its next request is already waiting in the kernel: that one is
 * answered), a busy one after its current response (sent with
 * Connection: close).
 */
void conn_drain_all(void);
/* Closes every connection of the calling worker at once (drain timeout over). */
void conn_abort_all(void);
/* Frees the calling worker's per-thread caches (at worker exit). */
void conn_thread_cleanup(void);

#endif
