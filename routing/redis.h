/*
 * redis: the only file that includes hiredis.  An asynchronous connection on
 * a libevent base with what Debian 12's hiredis 0.14 lacks: a per-command
 * deadline, reconnection with backoff, AUTH and SELECT from the URL, and a
 * subscriber mode.  Plus a small synchronous client for tollgate-ctl.
 *
 * URLs: redis://[:password@]host:port[/db] and unix:///path/to.sock
 * Replies are exposed through an opaque struct redis_reply with accessors,
 * valid only during the callback.
 */
#ifndef TG_REDIS_H
#define TG_REDIS_H

#include <stddef.h>

struct event_base;
struct redis_conn;
struct redis_reply;
struct redis_sync;

enum redis_type {
    REDIS_T_STRING = 1, REDIS_T_ARRAY, REDIS_T_INTEGER, REDIS_T_NIL, REDIS_T_STATUS, REDIS_T_ERROR
};

int redis_reply_type(const struct redis_reply *r);
/* For STRING, STATUS, ERROR; NULL otherwise. */
const char *redis_reply_str(const struct redis_reply *r, size_t *len);
long long redis_reply_int(const struct redis_reply *r);
/* For ARRAY: number of elements and element i (NULL when out of range). */
size_t redis_reply_len(const struct redis_reply *r);
const struct redis_reply *redis_reply_elem(const struct redis_reply *r, size_t i);

/*
 * Command callback: err is NULL on success (r may still be an ERROR reply),
 * else "timeout", "disconnected" or a hiredis message, with r NULL.
 * Called exactly once per accepted command, on the connection's loop.
 */
typedef void (*redis_cb)(void *arg, const struct redis_reply *r, const char *err);
/* Connection state changes: up = 1 after connect (+AUTH/SELECT ok), 0 when lost. */
typedef void (*redis_state_cb)(void *arg, int up);

/*
 * Creates a connection that connects at once and reconnects with backoff
 * (100 ms doubling to 5 s) whenever it is lost.  cmd_timeout_s is the
 * per-command deadline: a command without a reply by then fails with
 * "timeout" and the connection is dropped and redialled (a stalled Redis
 * must not hold requests).  NULL with err when the URL does not parse.
 *
 * Heartbeat: a connection that has read nothing from Redis for 1 s and has
 * no command outstanding sends PING; unanswered within cmd_timeout_s (but
 * never less than 1 s: a stall of a few hundred milliseconds must not flap
 * idle links), the PING drops the connection exactly as a late command
 * does (pending commands fail with "timeout", state_cb(0), redial).  So a
 * stopped Redis (SIGSTOP, a frozen host: TCP still up, keepalive still
 * answered by the kernel) is seen as down within about 2 s even while idle,
 * and an idle connection costs Redis about one PING a second.  It works on
 * a subscribed connection too (RESP2: the reply ["pong", ""] reaches no
 * subscription callback), except after a (P)UNSUBSCRIBE was sent on it,
 * where only TCP keepalive watches it.  The connection speaks RESP2 (never
 * HELLO 3; hiredis 0.14 cannot read RESP3 pushes).  Cost: one timer per
 * connection, re-armed when it fires, and a coarse clock read per read.
 */
struct redis_conn *redis_conn_new(struct event_base *base, const char *url, double cmd_timeout_s,
                                  redis_state_cb state_cb, void *arg, char *err, size_t errlen);
/* Names the connection in its log lines ("routing w0", "meter"...); name is copied (63 bytes at most). */
void redis_conn_set_name(struct redis_conn *c, const char *name);
/* Closes the connection; pending commands get err "disconnected". */
void redis_conn_free(struct redis_conn *c);
int redis_conn_is_up(const struct redis_conn *c);

/* Sends a command (binary-safe argv).  Returns 0, or -1 when not connected (cb not called). */
int redis_cmd(struct redis_conn *c, redis_cb cb, void *arg, int argc, const char **argv, const size_t *lens);
/* printf-style convenience (hiredis format: %s, %b, %d...). Same return. */
int redis_cmdf(struct redis_conn *c, redis_cb cb, void *arg, const char *fmt, ...);

/*
 * Subscriber use: after redis_cmd(c, cb, ...) with SUBSCRIBE/PSUBSCRIBE, cb
 * is called for every message pushed on it (hiredis keeps it registered);
 * these commands have no deadline.  Returns the client id of the connection
 * via CLIENT ID when asked with redis_cmd like any command.
 * Details (RESP2): once a connection sent (P)SUBSCRIBE it accepts only
 * (P)SUBSCRIBE and (P)UNSUBSCRIBE (others return -1; ask CLIENT ID before);
 * (P)UNSUBSCRIBE replies arrive on the subscription's callback.  When the
 * link is lost, each subscription callback gets err "disconnected" once;
 * subscriptions are not restored by the reconnect: resubscribe from
 * state_cb(up = 1).  MONITOR is refused.
 */

/* Synchronous client (tollgate-ctl only). */
struct redis_sync *redis_sync_connect(const char *url, double timeout_s, char *err, size_t errlen);
void redis_sync_free(struct redis_sync *s);
/* Runs one command; returns the reply (free with redis_sync_reply_free) or NULL with err. */
struct redis_reply *redis_sync_cmd(struct redis_sync *s, int argc, const char **argv, const size_t *lens,
                                   char *err, size_t errlen);
void redis_sync_reply_free(struct redis_reply *r);
/*
 * Pipelining for bulk reads (domain list): queues a command without waiting
 * (0 / -1 with err), then redis_sync_read() returns the replies in order
 * (free each with redis_sync_reply_free), NULL with err when the link broke.
 */
int redis_sync_append(struct redis_sync *s, int argc, const char **argv, const size_t *lens,
                      char *err, size_t errlen);
struct redis_reply *redis_sync_read(struct redis_sync *s, char *err, size_t errlen);

/* Parses a URL without connecting (for config validation). 0 / -1. */
int redis_url_check(const char *url, char *err, size_t errlen);

#endif
