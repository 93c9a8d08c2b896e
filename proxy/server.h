/*
 * server: the process around the connections.  N worker threads, each with
 * its own event_base, its own SO_REUSEPORT listeners, routing context,
 * meter handle, upstream pool and counters, sharing nothing on the hot path.
 * The main thread owns signals: SIGTERM/SIGINT drain and stop, SIGHUP reloads
 * the config and hands the new generation to every worker.
 */
#ifndef TG_SERVER_H
#define TG_SERVER_H

struct event_base;
struct tg_config;
struct route_ctx;
struct meter_worker;
struct tg_metrics;
struct upstream_pool;
struct worker;
struct conn;
struct route_addrs;

/*
 * Runs tollgate with cfg and resolved (its route_addrs_resolve(); the server
 * takes both over and frees them) until a stop signal; argc/argv are kept
 * to re-read the config on SIGHUP.
 * Returns the process exit status.
 */
int server_run(struct tg_config *cfg, struct route_addrs *resolved, int argc, char **argv);

/* Accessors for connection code, all O(1). */
struct event_base *worker_base(struct worker *w);
const struct tg_config *worker_config(struct worker *w);
/* Which configuration worker_config() is: a number no earlier configuration had (never a reused address). */
unsigned long worker_config_id(struct worker *w);
struct route_ctx *worker_routes(struct worker *w);
struct meter_worker *worker_meter(struct worker *w);
struct tg_metrics *worker_metrics(struct worker *w);
struct upstream_pool *worker_pool(struct worker *w);
int worker_draining(const struct worker *w);
/* Connection bookkeeping for draining: conn.c calls these on open and close. */
void worker_conn_add(struct worker *w);
void worker_conn_remove(struct worker *w);

#endif
