/*
 * metrics: process counters for /metrics.  Each worker owns one struct
 * tg_metrics and only its own thread writes it (plain increments, no lock,
 * no atomics on the hot path); the admin thread reads all workers' structs
 * with relaxed loads and sums them.  A torn read of a 64-bit counter cannot
 * happen on the 64-bit targets we build for.
 */
#ifndef TG_METRICS_H
#define TG_METRICS_H

#include <stdint.h>
#include <stdio.h>

struct tg_metrics {
    uint64_t connections_accepted;
    uint64_t connections_active;     /* gauge: accepted - closed */
    uint64_t requests_total;
    uint64_t responses_by_class[6];  /* index 1..5 = 1xx..5xx */
    uint64_t upstream_connect_errors;
    uint64_t upstream_timeouts;
    uint64_t upstream_resets;
    uint64_t upstream_reused;        /* requests served on a pooled connection */
    uint64_t bytes_in;               /* from clients */
    uint64_t bytes_out;              /* to clients */
    uint64_t bytes_spliced;          /* of bytes_out: moved by splice(2), never copied */
    uint64_t bad_requests;           /* 400-class rejections by the parser */
    uint64_t websocket_upgrades;
};

/*
 * A module that has its own counters registers a writer called at every
 * /metrics scrape (from the admin thread); it appends Prometheus text to f.
 * Registration happens at start-up, before workers run.
 */
typedef void (*metrics_writer_fn)(FILE *f, void *arg);
void metrics_register_writer(metrics_writer_fn fn, void *arg);

/* Registers a worker's counters (start-up only). */
void metrics_register_worker(struct tg_metrics *m);

/* Writes every metric in Prometheus text format to f. */
void metrics_write(FILE *f);

#endif
