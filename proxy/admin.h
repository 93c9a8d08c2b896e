/*
 * admin: the admin listener (--admin-listen), served by a small HTTP/1
 * server of its own (libevent listener and bufferevents, heads parsed by
 * proxy/h1.c) on a thread of its own with its own event_base, so that a
 * scrape never delays a worker and a stuck worker never hides /healthz.
 *
 *   GET /healthz  200 "ok\n"; 200 "degraded: redis unreachable\n" while
 *                 route_degraded() says so; 503 "draining\n" during a
 *                 graceful stop (admin_set_draining(1)).
 *   GET /metrics  200, Content-Type text/plain; version=0.0.4: metrics_write().
 *   HEAD works like GET (the length, no body); any other method on those
 *   paths gets 405 with "Allow: GET, HEAD"; any other path 404; the query
 *   string is ignored.  A head the HTTP/1 parser rejects gets its status
 *   (400, 501, 505) and a head over 8 KiB 431, then the connection closes.
 *   A request body is never read: the request is answered by the rules
 *   above with Connection: close, and the connection closes.
 *   Keep-alive (HTTP/1.1, or 1.0 with Connection: keep-alive) and pipelined
 *   requests are answered in order.
 *
 * Limits, because the admin port shares the process's descriptors with the
 * proxy: at most 64 admin connections at once (more wait in the kernel's
 * backlog); a whole request head must arrive, and the previous response
 * must have been read, within 10 s of the connection's accept or of the
 * previous response (a partial head then gets 408; an idle connection is
 * closed); an accept error (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses the
 * listener for 200 ms and is logged at most once a minute.
 *
 * Return convention: admin_start() returns NULL only on error (err filled).
 * A disabled listener (port 0, `admin-listen off`) is not an error: it
 * returns a handle that serves nothing, so callers need no special case.
 */
#ifndef TG_ADMIN_H
#define TG_ADMIN_H

#include <stddef.h>

struct cfg_addr;
struct admin;   /* opaque; owned by the caller of admin_start, freed by admin_stop */

/*
 * Binds addr and starts the admin thread.  Returns the handle, or NULL with
 * err filled when the address cannot be bound or the thread cannot start.
 * Signals are blocked on the admin thread.
 */
struct admin *admin_start(const struct cfg_addr *addr, char *err, size_t errlen);

/* Stops the thread, closes the listener and frees a. NULL is a no-op. */
void admin_stop(struct admin *a);

/* Process-wide: while on, /healthz answers 503 "draining". Thread-safe. */
void admin_set_draining(int on);

#endif
