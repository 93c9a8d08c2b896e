/*
 * metrics: the registry of per-worker counters and of extra writers, and the
 * Prometheus text exposition of their sum (format 0.0.4:
 * https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * Registration is start-up only and goes into fixed arrays; an entry is
 * written before the count that publishes it (release store), and the admin
 * thread reads the count with an acquire load, so a scrape never sees a
 * half-registered entry.  Counter fields are read with relaxed atomic loads:
 * workers increment them with plain stores on their own thread.
 */
#include "proxy/metrics.h"
#include "proxy/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <stddef.h>

#define METRICS_MAX_WORKERS 1024   /* config allows at most 1024 workers */
#define METRICS_MAX_WRITERS 32

static struct tg_metrics *workers[METRICS_MAX_WORKERS];
static size_t n_workers;
static struct {
    metrics_writer_fn fn;
    void *arg;
} writers[METRICS_MAX_WRITERS];
static size_t n_writers;
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;

void metrics_register_worker(struct tg_metrics *m)
{
    size_t n;
    if (!m)
        return;
    pthread_mutex_lock(&reg_lock);
    n = n_workers;
    if (n < METRICS_MAX_WORKERS) {
        workers[n] = m;
        __atomic_store_n(&n_workers, n + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&reg_lock);
    if (n >= METRICS_MAX_WORKERS)
        log_err("%s: more than %d workers; extra counters are not exported", __func__,
                METRICS_MAX_WORKERS);
}

void metrics_register_writer(metrics_writer_fn fn, void *arg)
{
    size_t n;
    if (!fn)
        return;
    pthread_mutex_lock(&reg_lock);
    n = n_writers;
    if (n < METRICS_MAX_WRITERS) {
        writers[n].fn = fn;
        writers[n].arg = arg;
        __atomic_store_n(&n_writers, n + 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&reg_lock);
    if (n >= METRICS_MAX_WRITERS)
        log_err("%s: more than %d metric writers; one is ignored", __func__, METRICS_MAX_WRITERS);
}

#define LOAD(field) __atomic_load_n(&m->field, __ATOMIC_RELAXED)

/* Sums every registered worker's counters into *sum. */
static void metrics_sum(struct tg_metrics *sum)
{
    size_t n = __atomic_load_n(&n_workers, __ATOMIC_ACQUIRE), i, c;
    *sum = (struct tg_metrics){ 0 };
    for (i = 0; i < n; i++) {
        const struct tg_metrics *m = workers[i];
        sum->connections_accepted += LOAD(connections_accepted);
        sum->connections_active += LOAD(connections_active);
        sum->requests_total += LOAD(requests_total);
        for (c = 0; c < 6; c++)
            sum->responses_by_class[c] += LOAD(responses_by_class[c]);
        sum->upstream_connect_errors += LOAD(upstream_connect_errors);
        sum->upstream_timeouts += LOAD(upstream_timeouts);
        sum->upstream_resets += LOAD(upstream_resets);
        sum->upstream_reused += LOAD(upstream_reused);
        sum->bytes_in += LOAD(bytes_in);
        sum->bytes_out += LOAD(bytes_out);
        sum->bytes_spliced += LOAD(bytes_spliced);
        sum->bad_requests += LOAD(bad_requests);
        sum->websocket_upgrades += LOAD(websocket_upgrades);
    }
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
    header(f, name, "counter", help);
    fprintf(f, "%s %" PRIu64 "\n", name, v);
}

void metrics_write(FILE *f)
{
    struct tg_metrics s;
    size_t n, i, c;

    metrics_sum(&s);
    counter(f, "tollgate_connections_accepted_total", "Client connections accepted.",
            s.connections_accepted);
    header(f, "tollgate_connections_active", "gauge", "Client connections currently open.");
    /* Per-worker gauges can be read mid-update; a sum below zero would be a transient. */
    fprintf(f, "tollgate_connections_active %" PRId64 "\n",
            (int64_t)s.connections_active < 0 ? 0 : (int64_t)s.connections_active);
    counter(f, "tollgate_requests_total", "Requests received from clients.", s.requests_total);
    header(f, "tollgate_responses_total", "counter", "Responses sent to clients by status class.");
    for (c = 1; c <= 5; c++)
        fprintf(f, "tollgate_responses_total{class=\"%zuxx\"} %" PRIu64 "\n", c,
                s.responses_by_class[c]);
    header(f, "tollgate_upstream_errors_total", "counter", "Failed backend exchanges by kind.");
    fprintf(f, "tollgate_upstream_errors_total{kind=\"connect\"} %" PRIu64 "\n",
            s.upstream_connect_errors);
    fprintf(f, "tollgate_upstream_errors_total{kind=\"timeout\"} %" PRIu64 "\n", s.upstream_timeouts);
    fprintf(f, "tollgate_upstream_errors_total{kind=\"reset\"} %" PRIu64 "\n", s.upstream_resets);
    counter(f, "tollgate_upstream_reused_total", "Requests sent on a pooled backend connection.",
            s.upstream_reused);
    header(f, "tollgate_bytes_total", "counter", "Bytes exchanged with clients.");
    fprintf(f, "tollgate_bytes_total{direction=\"in\"} %" PRIu64 "\n", s.bytes_in);
    fprintf(f, "tollgate_bytes_total{direction=\"out\"} %" PRIu64 "\n", s.bytes_out);
    counter(f, "tollgate_spliced_bytes_total", "Response body bytes moved to clients by splice(2) (part of bytes out).",
            s.bytes_spliced);
    counter(f, "tollgate_bad_requests_total", "Requests rejected as malformed.", s.bad_requests);
    counter(f, "tollgate_websocket_upgrades_total", "Connections upgraded to WebSocket tunnels.",
            s.websocket_upgrades);

    n = __atomic_load_n(&n_writers, __ATOMIC_ACQUIRE);
    for (i = 0; i < n; i++)
        writers[i].fn(f, writers[i].arg);
}
