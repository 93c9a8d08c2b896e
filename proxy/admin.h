/*
 * admin: the admin listener (--admin-listen), served by libevent's evhttp on
 * a thread of its own with its own event_base, so that a scrape never delays
 * a worker and a stuck worker never hides /healthz.
 *
 *   GET /healthz  200 "ok\n"; 200 "degraded: redis unreachable\n" while
 *                 route_degraded() says so; 503 "draining\n" during a
 *                 graceful stop (admin_set_draining(1)).
 *   GET /metrics  200, Content-Type text/plain; version=0.0.4: metrics_write().
 *   HEAD works like GET; other methods on those paths get 405; any other
 *   path 404.
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
