/*
 * upstream: connections to backends.  Dials a route_target and keeps a
 * per-worker pool of idle keep-alive connections per backend address.  A
 * pooled connection is only ever one that finished a response cleanly with
 * nothing left unread; an idle one that receives bytes or EOF is dropped.
 */
#ifndef TG_UPSTREAM_H
#define TG_UPSTREAM_H

#include <stddef.h>

struct event_base;
struct bufferevent;
struct route_target;
struct upstream_pool;

/* Creates an empty pool on base; idle connections live idle_s seconds. */
struct upstream_pool *upstream_pool_new(struct event_base *base, double idle_s);
/* Closes every idle connection and frees the pool. */
void upstream_pool_free(struct upstream_pool *p);
/* Closes every idle connection, their sockets at once (graceful stop; out
 * of descriptors). */
void upstream_pool_flush(struct upstream_pool *p);

/*
 * Takes an idle connection to t out of the pool: the caller owns it and must
 * set its callbacks and its timeouts before the event loop runs again (its
 * read event is still enabled, with the timeouts its last request left).
 * A connection with bytes or an EOF waiting on its socket, or whose read
 * event has fired in this loop iteration (its last request's read timeout
 * falling due: it would reach the next request as a 504), is closed instead
 * (one recv(MSG_PEEK) per connection looked at).  NULL when none is clean.
 */
struct bufferevent *upstream_pool_get(struct upstream_pool *p, const struct route_target *t);
/* Idle connections the pool keeps per backend (per worker). */
#define UPSTREAM_POOL_MAX_IDLE 64

/* Gives a clean connection back (the pool owns it then). */
void upstream_pool_put(struct upstream_pool *p, const struct route_target *t, struct bufferevent *bev);

/*
 * Starts a non-blocking connect to t; the caller owns the returned
 * bufferevent and learns the result from its event callback
 * (BEV_EVENT_CONNECTED or BEV_EVENT_ERROR/TIMEOUT).  NULL, errno set, when
 * the connect failed at once (a local error, or an unreachable network).
 */
struct bufferevent *upstream_connect(struct event_base *base, const struct route_target *t);

#endif
