/*
 * meter: per-tenant byte and request counters and cap enforcement.
 * The hot path (meter_count_*, meter_allow) touches only the worker's own
 * struct meter_worker: no lock, no Redis call.  A process-wide flusher
 * (struct meter, its own thread and Redis connection) collects each worker's
 * deltas once per flush interval, adds them to tg:meter:<tenant>:<YYYYMM>
 * and :<YYYYMMDD> idempotently, and leases cap budgets from Redis.
 * What a metered byte is: ../shared/CONTRACT.md "Metered bytes".
 */
#ifndef TG_METER_H
#define TG_METER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "routing/route.h"

struct event_base;
struct tg_config;

struct meter;          /* process-wide */
struct meter_worker;   /* per worker thread */
struct meter_tenant;   /* a worker's handle on one tenant; refcounted by that worker */

/* Creates the process meter (no thread yet).  NULL with err on error. */
struct meter *meter_new(const struct tg_config *cfg, int n_workers, char *err, size_t errlen);
/* Starts the flusher thread. 0 / -1. */
int meter_start(struct meter *m);
/* Final flush (waits up to timeout_s for Redis), stops the thread, frees m. */
void meter_stop(struct meter *m, double timeout_s);

/* Per-worker side, created before the worker's loop runs. */
struct meter_worker *meter_worker_new(struct meter *m, struct event_base *base, int worker_id);
void meter_worker_free(struct meter_worker *mw);

/*
 * Returns the worker's handle for tenant (a reference the caller must put),
 * creating it if needed; pol is the policy routing found for it now and
 * replaces the one the meter knew.
 */
struct meter_tenant *meter_tenant_get(struct meter_worker *mw, const char *tenant,
                                      const struct tenant_policy *pol);
void meter_tenant_put(struct meter_tenant *t);

enum meter_verdict { METER_ALLOW = 0, METER_OVER_CAP, METER_SUSPENDED };
/* Admission of a new request. */
enum meter_verdict meter_admit(struct meter_tenant *t);

void meter_count_request(struct meter_tenant *t);
void meter_count_in(struct meter_tenant *t, size_t n);
void meter_count_out(struct meter_tenant *t, size_t n);

/*
 * Enforcement before forwarding want bytes (either direction): returns how
 * many may go now (<= want) and reserves them against the cap.  block: 0
 * means the cap is reached: cut the transfer.  throttle: 0 with
 * *retry_ms > 0 means wait that long and ask again.  No cap: want.
 */
size_t meter_allow(struct meter_tenant *t, size_t want, unsigned *retry_ms);

/* Prometheus text for per-tenant counters (registered as a metrics writer). */
void meter_write_metrics(FILE *f, void *m);

/* ---- Additions (not used by the engine): introspection and pure helpers,
 * exposed so that unit tests and tollgate-ctl can reach them. ---- */

/* Default lease tuning: smallest slice, and k in remaining / (k * instances). */
#define METER_MIN_SLICE   (64 * 1024)
#define METER_LEASE_K     4

/*
 * Size of a lease slice: max(min_slice, remaining / (k * active)), then no
 * more than want and never more than remaining (0 when remaining <= 0).
 * The same arithmetic runs inside the lease Lua script.
 */
int64_t meter_lease_slice(int64_t remaining, int64_t active, int64_t k, int64_t min_slice, int64_t want);

/* Token bucket: tokens after elapsed_ns at rate bytes/s, capped at burst. */
int64_t meter_tb_refill(int64_t tokens, int64_t elapsed_ns, int64_t rate, int64_t burst);
/* Milliseconds until deficit bytes are refilled at rate (1..1000). */
unsigned meter_tb_retry_ms(int64_t deficit, int64_t rate);
/* Bucket depth used for a rate: rate / 20 (50 ms of traffic), at least 4 KiB. */
int64_t meter_tb_burst(int64_t rate);

/* UTC calendar day of t as YYYYMMDD, and the start of the next UTC day. */
int meter_utc_day(int64_t t);
int64_t meter_next_utc_day(int64_t t);

/* Escapes a Prometheus label value (\ \" \n) into out; returns out. */
char *meter_escape_label(const char *s, char *out, size_t outlen);

/*
 * 0 while the meter does not yet know whether a capped tenant is over its cap
 * (the first lease request of a tenant this instance has not seen is on its
 * way: one Redis round trip); 1 otherwise.  An engine that wants the very
 * first request of such a tenant to get 509 rather than a response cut before
 * its first body byte can wait (a 1 ms timer, a few times) before
 * meter_admit().  Worker thread; no lock.
 */
int meter_state_known(struct meter_tenant *t);

/* Hands the worker's pending deltas to the flusher now (the timer does it every flush interval). */
void meter_worker_tick(struct meter_worker *mw);

/*
 * Totals the process has counted for tenant since start (what /metrics shows;
 * they include deltas handed off but not yet in Redis).  0, or -1 if unknown.
 * Thread-safe.
 */
int meter_tenant_totals(struct meter *m, const char *tenant, uint64_t *bytes_in, uint64_t *bytes_out,
                        uint64_t *requests);

/* The run id that keys this process's flushes and leases in Redis. */
const char *meter_run_id(const struct meter *m);

/*
 * Parses a cap_bytes value with routing's parser (match_tenant_field():
 * 1..18 decimal digits, nothing else).  0 with *out set, or -1.
 */
int meter_parse_cap(const char *s, size_t len, int64_t *out);

struct redis_reply;
/*
 * The cap and suspension a lease script reply carries (elements 5 and 6; the
 * script reads <prefix>tenant:<tenant> itself, docs/metering.md "Policy
 * changes during a transfer"): *cap is the cap_bytes Redis holds, or -1
 * when it has no valid one; *suspended is 0 or 1.  0, or -1 when the reply
 * does not carry them or they are malformed.
 */
int meter_lease_reply_policy(const struct redis_reply *r, int64_t *cap, int *suspended);
/*
 * The whole tenant policy a lease script reply carries (elements 5 to 8):
 * p->cap_bytes and p->suspended as meter_lease_reply_policy() gives them,
 * p->cap_action and p->throttle_bps as routing parses them (absent or
 * malformed: CAP_BLOCK, 0).  The flusher applies it to the tenant's shared
 * state, so that a change reaches in-flight transfers (docs/metering.md,
 * "Policy changes during a transfer").  0 with *p set, or -1 when the reply
 * does not carry all four or the first two are malformed (*p untouched).
 */
int meter_lease_reply_tenant_policy(const struct redis_reply *r, struct tenant_policy *p);

/* The Lua sources of the flush and lease scripts (documentation, tests). */
const char *meter_flush_lua(void);
const char *meter_lease_lua(void);

#endif
