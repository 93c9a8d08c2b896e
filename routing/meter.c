/*
 * meter: per-tenant byte and request counters, their idempotent flush to
 * Redis, and cap enforcement by budget leases.  The design and its
 * guarantees are written up in docs/metering.md; in short:
 *
 *  - Hot path.  Each worker owns a hash table of struct meter_tenant with
 *    pending deltas; meter_count_* are plain adds.  A timer on the worker's
 *    event_base hands the deltas to the flusher on every multiple of the
 *    flush interval of the wall clock (one mutex per worker per interval,
 *    never per request; UTC midnight is always such a boundary or an extra
 *    one, so a handoff never spans two days) and pokes the flusher, which
 *    sends at once: Redis is at most one interval behind.
 *  - Process-wide tenant state (struct meter_gt, one per tenant name, never
 *    freed before the meter) holds what the workers share: the policy, the
 *    instance's lease (an atomic int64 the workers fetch from with CAS), the
 *    throttle bucket (atomics) and the totals shown in /metrics.
 *  - The flusher (own thread, event_base and Redis connection) merges the
 *    handoffs per (tenant, day), cuts batches with a sequence number and
 *    sends them one at a time with EVALSHA; the flush script applies a batch
 *    only if its seq is above the last one applied for this run id, so a
 *    batch whose reply was lost is retried with the same seq and contents
 *    and counted once.  Deltas made meanwhile merge into the next batch.
 *    The script applies nothing of a batch with a malformed key (a meter
 *    hash that is not a hash, a field that is not an integer): it names
 *    the bad records, which wait in memory (m->parked) and go again with
 *    the next interval's batch, while the rest is sent at once.
 *  - Leases.  For every capped tenant active here the flusher asks the lease
 *    script for a slice of what remains of the month's cap after the usage
 *    and the budget the other instances hold; workers reserve from it with
 *    meter_allow.  When the script says nothing remains and the lease is
 *    used up the tenant is over cap.  A leased byte stays in what this
 *    instance reports as held until the flush script adds its count to the
 *    usage and takes it off the held budget in the same step.
 *
 * Threads: workers touch only their own struct meter_worker and the atomics
 * of struct meter_gt; the global tenant table and the policy "dirty" list
 * are under m->gmu (taken when a worker sees a tenant for the first time or
 * a policy change, and by /metrics); each handoff has its own mutex; every
 * other field is the flusher's.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config/config.h"
#include "proxy/log.h"
#include "proxy/metrics.h"
#include "routing/match.h"
#include "routing/meter.h"
#include "routing/redis.h"
#include "routing/schema.h"

#define MAX_BATCH          1000      /* (tenant, day) records per flush script call */
#define LEASE_TTL_MS       30000     /* a lease field not refreshed for this long is ignored */
#define LEASE_IDLE_S       5.0       /* release a lease unused for this long */
#define STARVED_RETRY_MS   5         /* retry hint while a lease request is on its way */
#define DEFAULT_THROTTLE   65536     /* bytes/s when cap_action throttle has no throttle_bps */
#define FLUSH_RETRY_S      0.2       /* no resend of a batch Redis answered with an error before this */
#define RELAXED            memory_order_relaxed

/* ------------------------------------------------------------ structures -- */

/* Process-wide state of one tenant.  Atomics are shared; the rest is the flusher's. */
struct meter_gt {
    struct meter *m;
    char *name;
    uint32_t hash;
    struct meter_gt *next;        /* hash chain (m->gmu) */
    struct meter_gt *all_next;    /* creation list (m->gmu) */
    struct meter_gt *dirty_next;  /* policy-changed list (m->gmu) */
    int on_dirty;                 /* (m->gmu) */

    /* Policy, written by workers under m->gmu, read anywhere. */
    _Atomic int64_t cap;
    _Atomic int action;
    _Atomic int64_t tbps;
    _Atomic int suspended;

    /* Lease and enforcement. */
    _Atomic int64_t avail;        /* budget this instance may still reserve */
    _Atomic int over;             /* Redis (or the local budget) says nothing remains */
    _Atomic int known;            /* a lease reply or a local budget exists for this month */
    _Atomic int renew;            /* a worker wants the lease renewed (set once, cleared by flusher) */
    _Atomic int64_t low_water;    /* renew when avail drops below this */
    _Atomic int epoch;            /* bumped when the lease state starts afresh (new month) */
    _Atomic int64_t tb_tokens;    /* throttle bucket */
    _Atomic int64_t tb_last_ns;

    /* Totals for /metrics (flusher writes, anyone reads). */
    _Atomic uint64_t tot_in, tot_out, tot_req;

    /* Flusher only. */
    ssize_t pend_idx;             /* index of its latest record in m->pending, -1 */
    ssize_t park_idx;             /* index of its latest record in m->parked, -1 */
    int bad_name;                 /* not a valid tenant id for a Redis key: counted in memory only */
    int in_capped;
    struct meter_gt *capped_next;
    int64_t lease_cap;            /* cap the lease state was computed for */
    int lease_month;              /* YYYYMM of the lease state */
    int64_t granted;              /* granted to this instance this month */
    int64_t acked_rsv;            /* reserved bytes whose counts Redis acknowledged this month */
    int64_t local_remaining;      /* what remained after our last grant (local enforcement) */
    int64_t usage_seen;           /* month usage in the last lease reply */
    int lease_inflight;
    double last_active;           /* monotonic seconds */
    double last_lease;
    int64_t rate_prev_consumed;
    double rate;                  /* reserved bytes/s, smoothed */
    struct meter_gt *pol_next;    /* m->polq: uncapped, active, policy to poll */
    int on_pol;
    int pol_inflight;             /* a policy poll (policy_lua) is on its way */
};

/* A worker's handle on a tenant. */
struct meter_tenant {
    struct meter_worker *mw;
    struct meter_gt *g;
    uint32_t hash;
    int refs;
    int on_active;
    int idle_ticks;
    double pol_pub_at;            /* last republish on a shared-state mismatch (mono s) */
    struct tenant_policy pol;     /* last policy this worker passed on */
    uint64_t d_in, d_out, d_req;
    uint64_t d_rsv;               /* counted bytes that were taken from the lease (see charge_unreserved) */
    uint64_t rsv_open;            /* reserved by meter_allow, not yet matched by a count */
    int rsv_epoch;                /* g->epoch that rsv_open was reserved in */
    struct meter_tenant *next;    /* hash chain */
    struct meter_tenant *anext;   /* active list */
};

struct meter_rec {
    struct meter_gt *g;
    int day;                      /* YYYYMMDD */
    uint64_t in, out, req, rsv;
};

struct meter_vec {
    struct meter_rec *v;
    size_t n, cap;
};

struct meter_handoff {
    pthread_mutex_t mu;
    struct meter_vec vec;
    int taken;                    /* a worker registered under this id */
};

struct meter_worker {
    struct meter *m;
    struct event_base *base;
    struct event *tick_ev;
    int id;
    struct meter_tenant **tab;
    size_t tab_cap, count;
    struct meter_tenant *active;
    int period_day;
    unsigned ticks;
};

/* A batch of records with its seq and its argv, kept identical across retries. */
struct meter_batch {
    struct meter_batch *next;
    uint64_t seq;
    struct meter_rec *recs;
    size_t n;
    int argc;
    char **argv;                  /* argv[0] and argv[1] are rewritten: EVALSHA sha / EVAL script */
    size_t *lens;
    int inflight;
    int tries;
};

struct meter {
    const struct tg_config *cfg;
    char prefix[128];
    char run_id[256];
    double interval;
    int n_workers;
    struct meter_handoff *ho;

    pthread_mutex_t gmu;
    struct meter_gt **gtab;
    size_t gcap, gcount;
    struct meter_gt *gall;
    struct meter_gt *dirty;

    /* Flusher. */
    struct event_base *base;
    struct event *tick_ev, *poke_ev, *stop_ev;
    int poke_fd;
    struct redis_conn *rc;
    int has_redis;
    _Atomic int redis_up;
    pthread_t th;
    int started;
    _Atomic int stopping;
    double stop_deadline;
    int final_phase;              /* 0 running, 1 flushing, 2 releasing, 3 done */
    int final_pending;
    char sha_flush[48], sha_lease[48];
    struct meter_vec pending;
    struct meter_vec spare;
    struct meter_vec parked;      /* records Redis refused for a malformed key, merged per (tenant, day) */
    double flush_retry_at;        /* no resend of the head batch before (mono s): it got an error */
    struct meter_batch *queue, *queue_tail;
    uint64_t next_seq;
    struct meter_gt *capped;
    struct meter_gt *polq;        /* uncapped tenants active in the interval */
    double pol_last;              /* when polq was last polled (once per interval) */

    /* Stats for /metrics. */
    _Atomic uint64_t st_flush_ok, st_flush_err, st_flush_dup, st_lease_req, st_lease_err,
        st_lease_granted_bytes, st_lease_denied, st_pending_recs, st_queued_batches, st_bad_recs,
        st_parked_recs;
};

/* ---------------------------------------------------------- Lua scripts -- */

/*
 * Flush script.  KEYS[1] = <prefix>meter:applied (HASH run id -> last seq),
 * then per record KEYS[3i+2], KEYS[3i+3], KEYS[3i+4] = month key, day key,
 * lease key of the month.  ARGV[1] = run id, ARGV[2] = seq, then per record
 * bytes_in, bytes_out, requests, rsv.  rsv is the part of the record's bytes
 * that this run had taken from its lease: they move, in the same atomic
 * step, from the budget the run holds (its field of the lease hash) to the
 * usage, so that no other instance ever sees them in both or in neither.
 * Returns 1 when applied, 0 when this seq was already applied.
 *
 * Redis does not undo what a script wrote before an error, so the script
 * first checks everything that could make a write fail and writes nothing
 * when a record is bad: its month and day keys (and its lease key when rsv
 * is not 0) must be hashes or absent, each field it adds to absent or an
 * integer HINCRBY accepts (Redis's string2ll: optional '-', no leading zero,
 * within a signed 64-bit integer), and the sums, this batch's earlier
 * records on the same key included, must stay within 2^63 - 1 (HINCRBY's
 * overflow error).  Lua numbers are doubles, so values are compared in two
 * parts (the digits above and below 10^9), each exact.  A hash's three
 * fields are read with one HMGET only when Redis keeps it in its compact
 * encoding (listpack, values of at most hash-max-listpack-value bytes);
 * otherwise each length is checked first (HSTRLEN), so a huge value is
 * never copied into Lua.  Then the reply is an array {i, why, ...}: the
 * 0-based index of each bad record and what is wrong with it (the key and
 * the reason), and the seq is not recorded.  Cost: about three times the
 * plain script's Redis time (1000 records: 15-20 ms instead of 5-7 ms).
 */
static const char flush_lua[] =
    "local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0\n"
    "local seq = tonumber(ARGV[2])\n"
    "if seq <= last then return 0 end\n"
    "local n = (#KEYS - 1) / 3\n"
    "local F = {'bytes_in', 'bytes_out', 'requests'}\n"
    "local MH, ML, E9 = 9223372036, 854775807, 1000000000\n"
    "local find, sub = string.find, string.sub\n"
    "local function split(d)\n"
    "  if #d <= 9 then return 0, tonumber(d) end\n"
    "  return tonumber(sub(d, 1, -10)), tonumber(sub(d, -9))\n"
    "end\n"
    "local function over(h, l) return h > MH or (h == MH and l > ML) end\n"
    "local function notint(k, f) return k .. ' field ' .. F[f] .. ' is not an integer' end\n"
    "local function nothash(k, t) return k .. ' is a ' .. t .. ', not a hash' end\n"
    "local ZERO = {0, 0, 0, 0, 0, 0}\n"
    "local function load(k)\n"
    "  local e = redis.call('OBJECT', 'ENCODING', k)\n"
    "  if not e then return ZERO end\n"
    "  local v\n"
    "  if e == 'listpack' or e == 'ziplist' then\n"
    "    v = redis.pcall('HMGET', k, F[1], F[2], F[3])\n"
    "    if v.err then return nothash(k, redis.call('TYPE', k).ok) end\n"
    "  else\n"
    "    local t = redis.call('TYPE', k).ok\n"
    "    if t ~= 'hash' then return nothash(k, t) end\n"
    "    v = {}\n"
    "    for f = 1, 3 do\n"
    "      local len = redis.call('HSTRLEN', k, F[f])\n"
    "      if len > 20 then v[f] = 'x'\n"
    "      elseif len > 0 or redis.call('HEXISTS', k, F[f]) == 1 then v[f] = redis.call('HGET', k, F[f])\n"
    "      else v[f] = false end\n"
    "    end\n"
    "  end\n"
    "  local s = {0, 0, 0, 0, 0, 0}\n"
    "  for f = 3, 1, -1 do\n"
    "    local x, h, l = v[f], 0, 0\n"
    "    if x and x ~= '0' then\n"
    "      local neg = find(x, '^%-')\n"
    "      local d = neg and sub(x, 2) or x\n"
    "      if #d > 19 or not find(d, '^[1-9]%d*$') then\n"
    "        h = notint(k, f)\n"
    "      else\n"
    "        h, l = split(d)\n"
    "        if h > MH or (h == MH and l > (neg and ML + 1 or ML)) then h = notint(k, f)\n"
    "        elseif neg then h, l = 0, 0 end\n"
    "      end\n"
    "    end\n"
    "    s[2*f-1], s[2*f] = h, l\n"
    "  end\n"
    "  return s\n"
    "end\n"
    "local vals, ltypes, bad, nh, nl = {}, {}, {}, {}, {}\n"
    "for i = 0, n - 1 do\n"
    "  local o, why = 4 * i, nil\n"
    "  for j = 0, 1 do\n"
    "    local k = KEYS[2 + j + 3*i]\n"
    "    local s = vals[k] or load(k)\n"
    "    vals[k] = s\n"
    "    if type(s) == 'string' then why = s; break end\n"
    "    for f = 1, 3 do\n"
    "      local a, x = ARGV[2 + f + o], 3*j + f\n"
    "      nh[x] = false\n"
    "      if a ~= '0' then\n"
    "        local h, l = s[2*f-1], s[2*f]\n"
    "        if type(h) == 'string' then why = h; break end\n"
    "        if #a > 19 then why = 'count ' .. a .. ' out of range'; break end\n"
    "        local ah, al = split(a)\n"
    "        h, l = h + ah, l + al\n"
    "        if l >= E9 then h, l = h + 1, l - E9 end\n"
    "        if over(ah, al) or over(h, l) then why = k .. ' field ' .. F[f] .. ' would overflow'; break end\n"
    "        nh[x], nl[x] = h, l\n"
    "      end\n"
    "    end\n"
    "    if why then break end\n"
    "  end\n"
    "  if not why and ARGV[6 + o] ~= '0' then\n"
    "    local lk = KEYS[4 + 3*i]\n"
    "    local t = ltypes[lk] or redis.call('TYPE', lk).ok\n"
    "    ltypes[lk] = t\n"
    "    if t ~= 'hash' and t ~= 'none' then why = nothash(lk, t) end\n"
    "  end\n"
    "  if why then\n"
    "    bad[#bad + 1] = i\n"
    "    bad[#bad + 1] = why\n"
    "  else\n"
    "    for j = 0, 1 do\n"
    "      local k = KEYS[2 + j + 3*i]\n"
    "      do\n"
    "        local s = vals[k]\n"
    "        if s == ZERO then s = {0, 0, 0, 0, 0, 0}; vals[k] = s end\n"
    "        for f = 1, 3 do\n"
    "          local x = 3*j + f\n"
    "          if nh[x] then s[2*f-1], s[2*f] = nh[x], nl[x] end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if #bad > 0 then return bad end\n"
    "for i = 0, n - 1 do\n"
    "  local bi, bo, rq, rs = ARGV[3 + 4*i], ARGV[4 + 4*i], ARGV[5 + 4*i], ARGV[6 + 4*i]\n"
    "  for j = 2, 3 do\n"
    "    local k = KEYS[j + 3*i]\n"
    "    if bi ~= '0' then redis.call('HINCRBY', k, 'bytes_in', bi) end\n"
    "    if bo ~= '0' then redis.call('HINCRBY', k, 'bytes_out', bo) end\n"
    "    if rq ~= '0' then redis.call('HINCRBY', k, 'requests', rq) end\n"
    "  end\n"
    "  if rs ~= '0' then\n"
    "    local lk = KEYS[4 + 3*i]\n"
    "    local v = redis.call('HGET', lk, ARGV[1])\n"
    "    local b, e = string.match(v or '', '^(%d+):(%d+)$')\n"
    "    if b then\n"
    "      local h = tonumber(b) - tonumber(rs)\n"
    "      if h < 0 then h = 0 end\n"
    "      redis.call('HSET', lk, ARGV[1], string.format('%d:%s', h, e))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "return 1\n";

/*
 * Lease script.  KEYS[1] = month usage key, KEYS[2] = <prefix>lease:<tenant>:<YYYYMM>
 * (HASH run id -> "<held>:<expiry ms>"), KEYS[3] = <prefix>meter:applied.
 * ARGV: run id, cap, held (budget this instance still holds: unreserved
 * lease + reserved bytes not yet in the usage, as far as the flush replies
 * it has had tell), min_slice, k, want, ttl_ms, release (0/1), seq and rsv
 * of the flush batch it has sent and not yet seen acknowledged (0 0 when
 * none): when Redis has applied that batch already, its rsv bytes are in the
 * usage and no longer held.  (KEYS[3], ARGV[9], ARGV[10] are optional.)
 * remaining = cap - usage - held(others, unexpired) - held(self);
 * slice = min(max(min_slice, remaining / (k * active)), want, remaining).
 * KEYS[4] (optional) = <prefix>tenant:<tenant>: the script reads cap_bytes,
 * suspended, cap_action and throttle_bps itself, so that a policy changed in
 * Redis reaches an in-flight transfer at its next lease (every interval
 * while it is active, over the cap and throttled included) rather than with
 * the tenant's next request.  A cap_bytes that parses as routing parses it
 * (1..18 decimal digits) replaces ARGV[2]; otherwise the cap passed in is
 * used, as before.  Lengths are checked (HSTRLEN) before a value is read:
 * Redis allows 512 MB, and copying such a value into Lua would stall Redis
 * for every client.
 * Returns {slice, remaining - slice, active instances, usage, rcap, susp,
 * action, tbps}: rcap is the cap_bytes string the script used, or -1 when
 * the hash has no valid one; susp is 1 when suspended is "1", else 0
 * (routing's rules); action and tbps are the cap_action and throttle_bps
 * strings as stored ("" when absent or longer than any valid value: not
 * read), parsed by the flusher with routing's parser.
 */
static const char lease_lua[] =
    "local cap = tonumber(ARGV[2])\n"
    "local held = tonumber(ARGV[3])\n"
    "local minsl = tonumber(ARGV[4])\n"
    "local k = tonumber(ARGV[5])\n"
    "local want = tonumber(ARGV[6])\n"
    "local ttl = tonumber(ARGV[7])\n"
    "local rel = ARGV[8] == '1'\n"
    "local rcap, susp, act, tbps = -1, 0, '', ''\n"
    "if KEYS[4] and redis.call('TYPE', KEYS[4]).ok == 'hash' then\n"
    "  local c = redis.call('HSTRLEN', KEYS[4], 'cap_bytes') <= 18 and redis.call('HGET', KEYS[4], 'cap_bytes')\n"
    "  if c and string.match(c, '^%d+$') then\n"
    "    rcap = c\n"
    "    cap = tonumber(c)\n"
    "  end\n"
    "  if redis.call('HSTRLEN', KEYS[4], 'suspended') == 1 and redis.call('HGET', KEYS[4], 'suspended') == '1' then\n"
    "    susp = 1\n"
    "  end\n"
    "  local la = redis.call('HSTRLEN', KEYS[4], 'cap_action')\n"
    "  if la > 0 and la <= 8 then act = redis.call('HGET', KEYS[4], 'cap_action') end\n"
    "  local lt = redis.call('HSTRLEN', KEYS[4], 'throttle_bps')\n"
    "  if lt > 0 and lt <= 18 then tbps = redis.call('HGET', KEYS[4], 'throttle_bps') end\n"
    "end\n"
    "if KEYS[3] and ARGV[10] and tonumber(ARGV[10]) > 0 then\n"
    "  local last = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0') or 0\n"
    "  if last >= tonumber(ARGV[9]) then\n"
    "    held = held - tonumber(ARGV[10])\n"
    "    if held < 0 then held = 0 end\n"
    "  end\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local u = (tonumber(redis.call('HGET', KEYS[1], 'bytes_in') or '0') or 0)\n"
    "        + (tonumber(redis.call('HGET', KEYS[1], 'bytes_out') or '0') or 0)\n"
    "local others, active = 0, 1\n"
    "local all = redis.call('HGETALL', KEYS[2])\n"
    "for i = 1, #all, 2 do\n"
    "  if all[i] ~= ARGV[1] then\n"
    "    local b, e = string.match(all[i + 1], '^(%d+):(%d+)$')\n"
    "    if b and tonumber(e) > now then\n"
    "      others = others + tonumber(b)\n"
    "      active = active + 1\n"
    "    else\n"
    "      redis.call('HDEL', KEYS[2], all[i])\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local remaining = cap - u - others - held\n"
    "local slice = 0\n"
    "if (not rel) and remaining > 0 then\n"
    "  slice = math.floor(remaining / (k * active))\n"
    "  if slice < minsl then slice = minsl end\n"
    "  if slice > want then slice = want end\n"
    "  if slice > remaining then slice = remaining end\n"
    "end\n"
    "if rel and held <= 0 then\n"
    "  redis.call('HDEL', KEYS[2], ARGV[1])\n"
    "else\n"
    "  redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%d', held + slice, now + ttl))\n"
    "  redis.call('PEXPIRE', KEYS[2], ttl * 4)\n"
    "end\n"
    "return {slice, remaining - slice, active, u, rcap, susp, act, tbps}\n";

const char *meter_flush_lua(void) { return flush_lua; }
const char *meter_lease_lua(void) { return lease_lua; }

/* --------------------------------------------------------- pure helpers -- */

int64_t meter_lease_slice(int64_t remaining, int64_t active, int64_t k, int64_t min_slice, int64_t want)
{
    if (remaining <= 0)
        return 0;
    if (active < 1)
        active = 1;
    if (k < 1)
        k = 1;
    int64_t s = remaining / (k * active);
    if (s < min_slice)
        s = min_slice;
    if (s > want)
        s = want;
    if (s > remaining)
        s = remaining;
    return s < 0 ? 0 : s;
}

int meter_parse_cap(const char *s, size_t len, int64_t *out)
{
    /* routing's own parser of the tenant hash, so both read a value alike */
    struct tenant_policy p = { .cap_bytes = -1 };
    char err[80];
    if (!s || match_tenant_field(&p, "cap_bytes", 9, s, len, err, sizeof(err)) < 0)
        return -1;
    *out = p.cap_bytes;
    return 0;
}

int meter_lease_reply_policy(const struct redis_reply *r, int64_t *cap, int *suspended)
{
    if (!r || redis_reply_type(r) != REDIS_T_ARRAY || redis_reply_len(r) < 6)
        return -1;
    const struct redis_reply *c = redis_reply_elem(r, 4), *su = redis_reply_elem(r, 5);
    if (!c || !su || redis_reply_type(su) != REDIS_T_INTEGER)
        return -1;
    int64_t sv = redis_reply_int(su);
    if (sv != 0 && sv != 1)
        return -1;
    if (redis_reply_type(c) == REDIS_T_INTEGER) {
        if (redis_reply_int(c) != -1)
            return -1;
        *cap = -1;
    } else if (redis_reply_type(c) == REDIS_T_STRING) {
        size_t len = 0;
        const char *s = redis_reply_str(c, &len);
        if (meter_parse_cap(s, len, cap) < 0)
            return -1;
    } else {
        return -1;
    }
    *suspended = (int)sv;
    return 0;
}

/*
 * Takes field f of the tenant hash, as the string reply e carries it, into p
 * with routing's parser: absent (nil, "", not a string) or malformed leaves
 * p's value (routing treats a malformed value as absent).
 */
static void policy_field(struct tenant_policy *p, const char *f, const struct redis_reply *e)
{
    size_t len = 0;
    const char *s = e && redis_reply_type(e) == REDIS_T_STRING ? redis_reply_str(e, &len) : NULL;
    char err[80];
    if (s && len > 0)
        (void)match_tenant_field(p, f, strlen(f), s, len, err, sizeof(err));
}

int meter_lease_reply_tenant_policy(const struct redis_reply *r, struct tenant_policy *p)
{
    struct tenant_policy q = { -1, CAP_BLOCK, 0, 0 };
    if (!p || meter_lease_reply_policy(r, &q.cap_bytes, &q.suspended) < 0 || redis_reply_len(r) < 8)
        return -1;
    const struct redis_reply *a = redis_reply_elem(r, 6), *t = redis_reply_elem(r, 7);
    if (!a || !t || redis_reply_type(a) != REDIS_T_STRING || redis_reply_type(t) != REDIS_T_STRING)
        return -1;
    policy_field(&q, "cap_action", a);
    policy_field(&q, "throttle_bps", t);
    *p = q;
    return 0;
}

int64_t meter_tb_refill(int64_t tokens, int64_t elapsed_ns, int64_t rate, int64_t burst)
{
    if (elapsed_ns <= 0 || rate <= 0)
        return tokens > burst ? burst : tokens;
    /* elapsed * rate may overflow int64 for long idle periods: clamp first. */
    int64_t need = burst - tokens;
    if (need <= 0)
        return burst;
    if (elapsed_ns >= (int64_t)1000000000 * 3600)
        return burst;
    __int128 add = (__int128)elapsed_ns * rate / 1000000000;
    if (add >= need)
        return burst;
    return tokens + (int64_t)add;
}

unsigned meter_tb_retry_ms(int64_t deficit, int64_t rate)
{
    if (rate <= 0)
        return 1000;
    if (deficit <= 0)
        return 1;
    int64_t ms = (deficit * 1000 + rate - 1) / rate;
    if (ms < 1)
        ms = 1;
    if (ms > 1000)
        ms = 1000;
    return (unsigned)ms;
}

int64_t meter_tb_burst(int64_t rate)
{
    int64_t b = rate / 20;
    return b < 4096 ? 4096 : b;
}

int meter_utc_day(int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    return (tm.tm_year + 1900) * 10000 + (tm.tm_mon + 1) * 100 + tm.tm_mday;
}

int64_t meter_next_utc_day(int64_t t)
{
    int64_t d = t / 86400;
    if (t < 0 && t % 86400)
        d--;
    return (d + 1) * 86400;
}

char *meter_escape_label(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen == 0)
        return out;
    for (; *s; s++) {
        const char *rep = NULL;
        char one[2] = { *s, 0 };
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '"')
            rep = "\\\"";
        else if (*s == '\n')
            rep = "\\n";
        else
            rep = one;
        size_t rl = strlen(rep);
        if (o + rl >= outlen)
            break;
        memcpy(out + o, rep, rl);
        o += rl;
    }
    out[o] = 0;
    return out;
}

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/*
 * The UTC second now, from the precise clock.  Never time(): glibc reads the
 * kernel's coarse clock for it, which lags by up to a tick (1-10 ms), and
 * the handoff timer fires 1 ms after UTC midnight, when time() may still
 * say 23:59:59: the new day's first interval was billed to the day (and, on
 * the 1st, the month) before.  Everything that derives the metering period
 * reads this.
 */
static int64_t wall_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int vec_push(struct meter_vec *v, const struct meter_rec *r)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        struct meter_rec *nv = realloc(v->v, nc * sizeof(*nv));
        if (!nv)
            return -1;
        v->v = nv;
        v->cap = nc;
    }
    v->v[v->n++] = *r;
    return 0;
}

/*
 * Key names, as new strings (NULL when they do not fit), all from
 * routing/schema.h, including the two keys the meter adds to the contract's
 * schema (<p>meter:applied and <p>lease:<tenant>:<YYYYMM>, docs/metering.md).
 */
static char *key_usage(const struct meter *m, const char *tenant, int date)
{
    char buf[SCHEMA_KEY_MAX], period[16];
    snprintf(period, sizeof(period), "%d", date);
    if (schema_key_meter(buf, sizeof(buf), m->prefix, tenant, strlen(tenant), period) < 0)
        return NULL;
    return strdup(buf);
}

static char *key_lease(const struct meter *m, const char *tenant, int month)
{
    char buf[SCHEMA_KEY_MAX], period[16];
    snprintf(period, sizeof(period), "%d", month);
    if (schema_key_lease(buf, sizeof(buf), m->prefix, tenant, strlen(tenant), period) < 0)
        return NULL;
    return strdup(buf);
}

static char *key_tenant(const struct meter *m, const char *tenant)
{
    char buf[SCHEMA_KEY_MAX];
    if (schema_key_tenant(buf, sizeof(buf), m->prefix, tenant, strlen(tenant)) < 0)
        return NULL;
    return strdup(buf);
}

static char *key_applied(const struct meter *m)
{
    char buf[SCHEMA_KEY_MAX];
    if (schema_key_meter_applied(buf, sizeof(buf), m->prefix) < 0)
        return NULL;
    return strdup(buf);
}

static void poke(struct meter *m)
{
    if (m->poke_fd >= 0) {
        uint64_t one = 1;
        ssize_t r = write(m->poke_fd, &one, sizeof(one));
        (void)r;   /* EAGAIN: the counter is already non-zero, the flusher will wake */
    }
}

/* ------------------------------------------------------ global tenants -- */

static void gt_store_policy(struct meter_gt *g, const struct tenant_policy *p)
{
    atomic_store_explicit(&g->cap, p->cap_bytes, RELAXED);
    atomic_store_explicit(&g->action, p->cap_action, RELAXED);
    atomic_store_explicit(&g->tbps, p->throttle_bps, RELAXED);
    atomic_store_explicit(&g->suspended, p->suspended, RELAXED);
}

static int gt_policy_differs(struct meter_gt *g, const struct tenant_policy *p)
{
    return atomic_load_explicit(&g->cap, RELAXED) != p->cap_bytes ||
           atomic_load_explicit(&g->action, RELAXED) != p->cap_action ||
           atomic_load_explicit(&g->tbps, RELAXED) != p->throttle_bps ||
           atomic_load_explicit(&g->suspended, RELAXED) != p->suspended;
}

/* Under m->gmu. */
static void gt_mark_dirty(struct meter *m, struct meter_gt *g)
{
    if (!g->on_dirty) {
        g->on_dirty = 1;
        g->dirty_next = m->dirty;
        m->dirty = g;
    }
}

static struct meter_gt *gt_find_locked(struct meter *m, const char *name, uint32_t h)
{
    for (struct meter_gt *g = m->gtab[h & (m->gcap - 1)]; g; g = g->next)
        if (g->hash == h && strcmp(g->name, name) == 0)
            return g;
    return NULL;
}

static void gt_grow_locked(struct meter *m)
{
    size_t nc = m->gcap * 2;
    struct meter_gt **nt = calloc(nc, sizeof(*nt));
    if (!nt)
        return;   /* keep the longer chains */
    for (size_t i = 0; i < m->gcap; i++) {
        struct meter_gt *g = m->gtab[i];
        while (g) {
            struct meter_gt *nx = g->next;
            g->next = nt[g->hash & (nc - 1)];
            nt[g->hash & (nc - 1)] = g;
            g = nx;
        }
    }
    free(m->gtab);
    m->gtab = nt;
    m->gcap = nc;
}

/* Finds or creates the tenant; updates its policy.  NULL on allocation failure. */
static struct meter_gt *gt_get(struct meter *m, const char *name, uint32_t h, const struct tenant_policy *p)
{
    int wake = 0;
    pthread_mutex_lock(&m->gmu);
    struct meter_gt *g = gt_find_locked(m, name, h);
    if (!g) {
        g = calloc(1, sizeof(*g));
        if (g)
            g->name = strdup(name);
        if (!g || !g->name) {
            free(g);
            pthread_mutex_unlock(&m->gmu);
            return NULL;
        }
        g->m = m;
        g->hash = h;
        g->bad_name = !schema_tenant_valid(name, strlen(name));
        g->pend_idx = -1;
        g->park_idx = -1;
        g->lease_cap = -1;
        g->lease_month = 0;
        gt_store_policy(g, p);
        atomic_store_explicit(&g->known, !m->has_redis, RELAXED);
        if (m->gcount + 1 > m->gcap)
            gt_grow_locked(m);
        g->next = m->gtab[h & (m->gcap - 1)];
        m->gtab[h & (m->gcap - 1)] = g;
        g->all_next = m->gall;
        m->gall = g;
        m->gcount++;
        if (p->cap_bytes >= 0) {
            gt_mark_dirty(m, g);
            wake = 1;
        }
    } else if (gt_policy_differs(g, p)) {
        /* A new cap makes the state unknown until the lease reply computed
         * with it: the engine's admission waits for that round trip
         * (meter_state_known()), so that a raised cap admits at once rather
         * than 509, and a lowered one refuses (509) rather than admits and
         * cuts before the first byte. */
        if (m->has_redis && atomic_load_explicit(&m->redis_up, RELAXED) && p->cap_bytes >= 0 &&
            p->cap_bytes != atomic_load_explicit(&g->cap, RELAXED))
            atomic_store_explicit(&g->known, 0, RELAXED);
        gt_store_policy(g, p);
        gt_mark_dirty(m, g);
        wake = 1;
    }
    pthread_mutex_unlock(&m->gmu);
    if (wake)
        poke(m);
    return g;
}

/* ------------------------------------------------------------ creation -- */

static void *flusher_main(void *arg);
static void flusher_tick_cb(evutil_socket_t fd, short what, void *arg);
static void flusher_poke_cb(evutil_socket_t fd, short what, void *arg);
static void redis_state(void *arg, int up);

struct meter *meter_new(const struct tg_config *cfg, int n_workers, char *err, size_t errlen)
{
    if (n_workers < 1)
        n_workers = 1;
    struct meter *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->cfg = cfg;
    m->poke_fd = -1;
    snprintf(m->prefix, sizeof(m->prefix), "%s", cfg->key_prefix ? cfg->key_prefix : "tg:");
    m->interval = cfg->meter_flush_interval > 0 ? cfg->meter_flush_interval : 1.0;
    m->n_workers = n_workers;
    m->has_redis = cfg->redis_url != NULL && cfg->redis_url[0] != 0;

    /* Run id: instance id (or hostname:pid) plus the start time, so that a
     * restarted instance with a configured id never reuses old sequence numbers. */
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    long long start_ms = (long long)rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
    static _Atomic int meters_made;
    int nth = atomic_fetch_add(&meters_made, 1);
    char suffix[16] = "";
    if (nth > 0)
        snprintf(suffix, sizeof(suffix), ".%d", nth);   /* several meters in one process (tests) */
    if (cfg->instance_id && cfg->instance_id[0]) {
        snprintf(m->run_id, sizeof(m->run_id), "%s:%lld%s", cfg->instance_id, start_ms, suffix);
    } else {
        char host[128] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = 0;
        snprintf(m->run_id, sizeof(m->run_id), "%s:%ld:%lld%s", host, (long)getpid(), start_ms, suffix);
    }

    m->ho = calloc((size_t)n_workers, sizeof(*m->ho));
    m->gcap = 1024;
    m->gtab = calloc(m->gcap, sizeof(*m->gtab));
    if (!m->ho || !m->gtab) {
        free(m->ho);
        free(m->gtab);
        free(m);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n_workers; i++)
        pthread_mutex_init(&m->ho[i].mu, NULL);
    pthread_mutex_init(&m->gmu, NULL);

    m->poke_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    m->base = event_base_new();
    if (m->poke_fd < 0 || !m->base) {
        snprintf(err, errlen, "meter: cannot create the flusher loop: %s", strerror(errno));
        meter_stop(m, 0);
        return NULL;
    }
    m->tick_ev = event_new(m->base, -1, EV_PERSIST, flusher_tick_cb, m);
    m->poke_ev = event_new(m->base, m->poke_fd, EV_READ | EV_PERSIST, flusher_poke_cb, m);
    if (!m->tick_ev || !m->poke_ev) {
        snprintf(err, errlen, "meter: out of memory");
        meter_stop(m, 0);
        return NULL;
    }
    metrics_register_writer(meter_write_metrics, m);
    return m;
}

const char *meter_run_id(const struct meter *m)
{
    return m->run_id;
}

int meter_start(struct meter *m)
{
    if (m->started)
        return 0;
    if (m->has_redis) {
        char err[256];
        m->rc = redis_conn_new(m->base, m->cfg->redis_url,
                               m->cfg->redis_timeout > 0 ? m->cfg->redis_timeout : 0.2,
                               redis_state, m, err, sizeof(err));
        if (!m->rc) {
            log_err("%s: redis: %s", __func__, err);
            return -1;
        }
        redis_conn_set_name(m->rc, "meter");
    }
    struct timeval tv = { (time_t)m->interval, (suseconds_t)((m->interval - (time_t)m->interval) * 1e6) };
    event_add(m->tick_ev, &tv);
    event_add(m->poke_ev, NULL);
    if (pthread_create(&m->th, NULL, flusher_main, m) != 0) {
        log_err("%s: cannot start the flusher thread", __func__);
        return -1;
    }
    m->started = 1;
    return 0;
}

/* --------------------------------------------------------- worker side -- */

static void worker_tick_cb(evutil_socket_t fd, short what, void *arg);

static void worker_arm(struct meter_worker *mw)
{
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    double now = rt.tv_sec + rt.tv_nsec / 1e9;
    double midnight = (double)meter_next_utc_day(rt.tv_sec);
    double iv = mw->m->interval;
    /* Every worker hands off on the same wall-clock boundaries (multiples of
     * the interval), so the flusher sends one period's counts together. */
    double d = iv - fmod(now, iv);
    if (d < 0.001)
        d += iv;
    /* Cut the handoff at UTC midnight (1 ms after it) so that it never spans two days. */
    if (midnight + 0.001 - now < d)
        d = midnight + 0.001 - now;
    if (d < 0.001)
        d = 0.001;
    struct timeval tv = { (time_t)d, (suseconds_t)((d - (time_t)d) * 1e6) };
    evtimer_add(mw->tick_ev, &tv);
}

struct meter_worker *meter_worker_new(struct meter *m, struct event_base *base, int worker_id)
{
    if (worker_id < 0 || worker_id >= m->n_workers) {
        log_err("%s: worker id %d out of range (%d workers)", __func__, worker_id, m->n_workers);
        return NULL;
    }
    struct meter_worker *mw = calloc(1, sizeof(*mw));
    if (!mw)
        return NULL;
    mw->m = m;
    mw->base = base;
    mw->id = worker_id;
    mw->tab_cap = 256;
    mw->tab = calloc(mw->tab_cap, sizeof(*mw->tab));
    mw->period_day = meter_utc_day(wall_now_s());
    if (base)
        mw->tick_ev = evtimer_new(base, worker_tick_cb, mw);
    if (!mw->tab || (base && !mw->tick_ev)) {
        free(mw->tab);
        if (mw->tick_ev)
            event_free(mw->tick_ev);
        free(mw);
        return NULL;
    }
    if (mw->tick_ev)
        worker_arm(mw);
    return mw;
}

static void worker_sweep(struct meter_worker *mw)
{
    /* Frees handles nobody holds that have been idle a minute (bounded memory
     * when tenants come and go). */
    for (size_t i = 0; i < mw->tab_cap; i++) {
        struct meter_tenant **pp = &mw->tab[i];
        while (*pp) {
            struct meter_tenant *t = *pp;
            if (t->refs == 0 && !t->on_active && ++t->idle_ticks >= 60) {
                *pp = t->next;
                free(t);
                mw->count--;
                continue;
            }
            pp = &t->next;
        }
    }
}

void meter_worker_tick(struct meter_worker *mw)
{
    struct meter *m = mw->m;
    struct meter_handoff *ho = &m->ho[mw->id];
    int day = mw->period_day;
    int handed = 0;
    if (mw->active) {
        pthread_mutex_lock(&ho->mu);
        for (struct meter_tenant *t = mw->active; t; t = t->anext) {
            struct meter_rec r = { t->g, day, t->d_in, t->d_out, t->d_req, t->d_rsv };
            if (vec_push(&ho->vec, &r) == 0) {
                t->d_in = t->d_out = t->d_req = t->d_rsv = 0;
                handed = 1;
            }
            /* on allocation failure the deltas stay for the next tick */
        }
        pthread_mutex_unlock(&ho->mu);
        struct meter_tenant *t = mw->active;
        mw->active = NULL;
        while (t) {
            struct meter_tenant *nx = t->anext;
            t->anext = NULL;
            t->on_active = 0;
            t->idle_ticks = 0;
            if (t->d_in || t->d_out || t->d_req || t->d_rsv) {
                t->on_active = 1;
                t->anext = mw->active;
                mw->active = t;
            }
            t = nx;
        }
    }
    if (handed)
        poke(m);   /* the flusher sends now, not at its next tick: at most one interval unflushed */
    mw->period_day = meter_utc_day(wall_now_s());
    if (++mw->ticks % 60 == 0)
        worker_sweep(mw);
}

static void worker_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct meter_worker *mw = arg;
    meter_worker_tick(mw);
    worker_arm(mw);
}

void meter_worker_free(struct meter_worker *mw)
{
    if (!mw)
        return;
    meter_worker_tick(mw);   /* the last deltas go to the flusher */
    if (mw->tick_ev)
        event_free(mw->tick_ev);
    for (size_t i = 0; i < mw->tab_cap; i++) {
        struct meter_tenant *t = mw->tab[i];
        while (t) {
            struct meter_tenant *nx = t->next;
            if (t->refs)
                log_warn("%s: tenant %s still has %d references", __func__, t->g->name, t->refs);
            free(t);
            t = nx;
        }
    }
    free(mw->tab);
    poke(mw->m);
    free(mw);
}

static void worker_grow(struct meter_worker *mw)
{
    size_t nc = mw->tab_cap * 2;
    struct meter_tenant **nt = calloc(nc, sizeof(*nt));
    if (!nt)
        return;
    for (size_t i = 0; i < mw->tab_cap; i++) {
        struct meter_tenant *t = mw->tab[i];
        while (t) {
            struct meter_tenant *nx = t->next;
            t->next = nt[t->hash & (nc - 1)];
            nt[t->hash & (nc - 1)] = t;
            t = nx;
        }
    }
    free(mw->tab);
    mw->tab = nt;
    mw->tab_cap = nc;
}

static const struct tenant_policy no_policy = { -1, CAP_BLOCK, 0, 0 };

struct meter_tenant *meter_tenant_get(struct meter_worker *mw, const char *tenant,
                                      const struct tenant_policy *pol)
{
    if (!mw || !tenant)
        return NULL;
    if (!pol)
        pol = &no_policy;
    uint32_t h = hash_str(tenant);
    for (struct meter_tenant *t = mw->tab[h & (mw->tab_cap - 1)]; t; t = t->next) {
        if (t->hash == h && strcmp(t->g->name, tenant) == 0) {
            /* field by field: the struct has padding that routing may not zero */
            /* Also against the shared state: the flusher applies the policy
             * Redis holds during a transfer, and a worker that
             * saw no request meanwhile still holds the old policy in t->pol;
             * when routing's policy is back to it (the admin lifted the
             * suspension), only this comparison publishes it. */
            if (t->pol.cap_bytes != pol->cap_bytes || t->pol.cap_action != pol->cap_action ||
                t->pol.throttle_bps != pol->throttle_bps || t->pol.suspended != pol->suspended) {
                t->pol = *pol;
                gt_get(mw->m, tenant, h, pol);   /* publishes the change */
            } else if (gt_policy_differs(t->g, pol)) {
                /* The shared state differs: a lift, or routing lagging behind
                 * what the flusher read from Redis.  At most once per interval
                 * per worker, so a lagging view cannot undo the flusher's
                 * value on every request; the flusher re-reads Redis within
                 * the interval either way. */
                double now = mono_now();
                if (now - t->pol_pub_at >= mw->m->interval) {
                    t->pol_pub_at = now;
                    gt_get(mw->m, tenant, h, pol);
                }
            }
            t->refs++;
            return t;
        }
    }
    struct meter_gt *g = gt_get(mw->m, tenant, h, pol);
    if (!g)
        return NULL;
    struct meter_tenant *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->mw = mw;
    t->g = g;
    t->hash = h;
    t->refs = 1;
    t->pol = *pol;
    if (mw->count + 1 > mw->tab_cap)
        worker_grow(mw);
    t->next = mw->tab[h & (mw->tab_cap - 1)];
    mw->tab[h & (mw->tab_cap - 1)] = t;
    mw->count++;
    return t;
}

int meter_state_known(struct meter_tenant *t)
{
    if (!t)
        return 1;
    struct meter_gt *g = t->g;
    struct meter *m = t->mw->m;
    if (atomic_load_explicit(&g->cap, RELAXED) < 0 || atomic_load_explicit(&g->suspended, RELAXED) ||
        atomic_load_explicit(&g->known, RELAXED) || !m->started || !atomic_load_explicit(&m->redis_up, RELAXED))
        return 1;
    if (!atomic_exchange(&g->renew, 1))
        poke(m);
    return 0;
}

/*
 * When the worker's last request of the tenant lets go, bytes it reserved
 * and will never count (a response cut or abandoned with bytes still in its
 * buffers) go back to the lease: until then they count as held.
 */
void meter_tenant_put(struct meter_tenant *t)
{
    if (!t || t->refs <= 0)
        return;
    if (--t->refs == 0 && t->rsv_open) {
        struct meter_gt *g = t->g;
        /* The flusher starts a new month's lease with epoch++ and then
         * avail = 0 (gt_lease_reset).  An add that lands after that store
         * would give the old month's bytes to the new month; such an add
         * sees the new epoch when it looks again, and takes them back.  An
         * add the store wiped may be taken back too: the new month then
         * holds a little less than it was granted (under-serving, never
         * overshoot).  Sequentially consistent: a rare path. */
        if (t->rsv_epoch == atomic_load(&g->epoch)) {
            atomic_fetch_add(&g->avail, (int64_t)t->rsv_open);
            if (atomic_load(&g->epoch) != t->rsv_epoch)
                atomic_fetch_sub(&g->avail, (int64_t)t->rsv_open);
        }
        t->rsv_open = 0;
    }
}

/* Reservations of an earlier lease epoch (an earlier month) are no longer ours to match. */
static inline void rsv_sync_epoch(struct meter_tenant *t)
{
    int e = atomic_load_explicit(&t->g->epoch, RELAXED);
    if (t->rsv_epoch != e) {
        t->rsv_epoch = e;
        t->rsv_open = 0;
    }
}

static inline void mark_active(struct meter_tenant *t)
{
    if (!t->on_active) {
        t->on_active = 1;
        t->anext = t->mw->active;
        t->mw->active = t;
    }
}

void meter_count_request(struct meter_tenant *t)
{
    if (!t)
        return;
    t->d_req++;
    mark_active(t);
}

/*
 * Matches n counted bytes with the lease.  Bytes reserved earlier on this
 * worker (rsv_open) are matched first.  Counted bytes that meter_allow did
 * not reserve (request and response heads, local responses) are taken from
 * the lease too, so that the budget every instance reports to Redis covers
 * them at once rather than at the next flush.  They are never refused (they
 * have been or will be sent): when the lease is empty the debt makes avail
 * negative, and the next slice pays it before any body byte passes.  Not
 * while the tenant's state is unknown (first sight, or served without limit
 * while Redis is away) or over the cap with the lease used up: there is no
 * lease to take from then.  (Over the cap with some lease left, the heads of
 * the requests that lease still admits are taken from it like any byte.)
 *
 * d_rsv gets every counted byte that came out of the lease, matched or
 * charged, and nothing else: it travels to Redis in the same record as the
 * count, and the flush script moves exactly those bytes from this run's
 * held budget to the usage in one atomic step.  (Handing off reservations
 * instead let bytes reserved in one interval and counted in the next, those
 * still in the client's socket buffer at the handoff, leave the held budget
 * one flush before they reached the usage: another instance could be
 * granted them again.)
 */
static void charge_unreserved(struct meter_tenant *t, size_t n)
{
    rsv_sync_epoch(t);
    if (t->rsv_open >= n) {
        t->rsv_open -= n;
        t->d_rsv += n;
        return;
    }
    int64_t extra = (int64_t)(n - t->rsv_open);
    t->d_rsv += t->rsv_open;
    t->rsv_open = 0;
    struct meter_gt *g = t->g;
    if (atomic_load_explicit(&g->cap, RELAXED) < 0 ||
        (atomic_load_explicit(&g->over, RELAXED) && atomic_load_explicit(&g->avail, RELAXED) <= 0) ||
        !atomic_load_explicit(&g->known, RELAXED) || !t->mw->m->started)
        return;
    int64_t left = atomic_fetch_sub_explicit(&g->avail, extra, RELAXED) - extra;
    t->d_rsv += (uint64_t)extra;
    if (left < atomic_load_explicit(&g->low_water, RELAXED) && !atomic_exchange(&g->renew, 1))
        poke(t->mw->m);
}

void meter_count_in(struct meter_tenant *t, size_t n)
{
    if (!t || !n)
        return;
    t->d_in += n;
    mark_active(t);
    charge_unreserved(t, n);
}

void meter_count_out(struct meter_tenant *t, size_t n)
{
    if (!t || !n)
        return;
    t->d_out += n;
    mark_active(t);
    charge_unreserved(t, n);
}

enum meter_verdict meter_admit(struct meter_tenant *t)
{
    if (!t)
        return METER_ALLOW;
    struct meter_gt *g = t->g;
    if (atomic_load_explicit(&g->suspended, RELAXED))
        return METER_SUSPENDED;
    if (atomic_load_explicit(&g->cap, RELAXED) < 0)
        return METER_ALLOW;
    if (atomic_load_explicit(&g->over, RELAXED) && atomic_load_explicit(&g->avail, RELAXED) <= 0 &&
        atomic_load_explicit(&g->action, RELAXED) != CAP_THROTTLE) {
        /* Ask the flusher to look again at its next tick (budget given back
         * by another instance); no poke: refusals must stay cheap. */
        if (!atomic_load_explicit(&g->renew, RELAXED))
            atomic_store_explicit(&g->renew, 1, RELAXED);
        return METER_OVER_CAP;
    }
    return METER_ALLOW;
}

/* Takes up to want tokens from the throttle bucket shared by the workers. */
static size_t throttle_take(struct meter_gt *g, size_t want, unsigned *retry_ms)
{
    int64_t rate = atomic_load_explicit(&g->tbps, RELAXED);
    if (rate <= 0)
        rate = DEFAULT_THROTTLE;
    int64_t burst = meter_tb_burst(rate);
    int64_t now = mono_ns();
    int64_t last = atomic_load_explicit(&g->tb_last_ns, RELAXED);
    if (last == 0) {
        /* First use: start with an empty bucket so the pace holds from the first byte. */
        if (atomic_compare_exchange_strong(&g->tb_last_ns, &last, now))
            last = now;
    }
    /* Whoever moves tb_last_ns forward adds the tokens for that time. */
    while (now > last) {
        if (atomic_compare_exchange_weak(&g->tb_last_ns, &last, now)) {
            int64_t tok = atomic_load_explicit(&g->tb_tokens, RELAXED);
            int64_t nt;
            do {
                nt = meter_tb_refill(tok, now - last, rate, burst);
            } while (!atomic_compare_exchange_weak(&g->tb_tokens, &tok, nt));
            break;
        }
    }
    int64_t tok = atomic_load_explicit(&g->tb_tokens, RELAXED);
    /* Tokens go out only once the bucket holds a useful amount, a quarter
     * of it, whatever is asked: handing out the few tokens that build up
     * during one system call would make a paced transfer spin, moving a
     * hundred bytes per wake-up (with a splice pump, a core at 100% for a
     * 1 MB/s throttle); and a threshold that depended on the size asked
     * would let small askers (a chatty WebSocket) empty the bucket piece by
     * piece before it ever held what a large one (a download) waits for.
     * The same bar for all: each waiter's retry falls due when it is
     * reached, and whoever comes first takes what it asked, up to all. */
    int64_t need = burst / 4;
    for (;;) {
        if (tok < need) {
            if (retry_ms)
                *retry_ms = meter_tb_retry_ms(need - tok, rate);
            return 0;
        }
        int64_t n = tok < (int64_t)want ? tok : (int64_t)want;
        if (atomic_compare_exchange_weak(&g->tb_tokens, &tok, tok - n))
            return (size_t)n;
    }
}

size_t meter_allow(struct meter_tenant *t, size_t want, unsigned *retry_ms)
{
    if (retry_ms)
        *retry_ms = 0;
    if (!t || want == 0)
        return want;
    struct meter_gt *g = t->g;
    if (atomic_load_explicit(&g->suspended, RELAXED))
        return 0;
    if (atomic_load_explicit(&g->cap, RELAXED) < 0)
        return want;
    rsv_sync_epoch(t);
    int64_t a = atomic_load_explicit(&g->avail, RELAXED);
    while (a > 0) {
        int64_t n = a < (int64_t)want ? a : (int64_t)want;
        if (atomic_compare_exchange_weak(&g->avail, &a, a - n)) {
            /* held (granted - avail - acked_rsv) until counted and flushed */
            t->rsv_open += (uint64_t)n;
            mark_active(t);
            if (a - n < atomic_load_explicit(&g->low_water, RELAXED) &&
                !atomic_exchange(&g->renew, 1))
                poke(t->mw->m);
            return (size_t)n;
        }
    }
    /* The lease is used up. */
    if (atomic_load_explicit(&g->over, RELAXED)) {
        if (atomic_load_explicit(&g->action, RELAXED) == CAP_THROTTLE)
            return throttle_take(g, want, retry_ms);
        return 0;   /* block: cut */
    }
    struct meter *m = t->mw->m;
    if (!m->started)
        return want;   /* no flusher (tests, start-up): nothing can lease */
    if (m->has_redis && !atomic_load_explicit(&g->known, RELAXED) &&
        !atomic_load_explicit(&m->redis_up, RELAXED))
        return want;   /* never seen and Redis unreachable: serve (docs/metering.md) */
    mark_active(t);
    if (!atomic_exchange(&g->renew, 1))
        poke(m);
    if (retry_ms)
        *retry_ms = STARVED_RETRY_MS;
    return 0;
}

/* --------------------------------------------------------- flusher side -- */

static void rec_merge(struct meter_rec *p, const struct meter_rec *r)
{
    p->in += r->in;
    p->out += r->out;
    p->req += r->req;
    p->rsv += r->rsv;
}

/* Adds r to v, merged with the record *idx points at (the tenant's latest
 * in v) when it is of the same day.  0, or -1 when out of memory. */
static int vec_add_merged(struct meter_vec *v, ssize_t *idx, const struct meter_rec *r)
{
    if (*idx >= 0 && v->v[*idx].day == r->day) {
        rec_merge(&v->v[*idx], r);
        return 0;
    }
    if (vec_push(v, r) < 0)
        return -1;
    *idx = (ssize_t)v->n - 1;
    return 0;
}

/* Adds r to m->pending, merged per (tenant, day). */
static int pending_add(struct meter *m, const struct meter_rec *r)
{
    return vec_add_merged(&m->pending, &r->g->pend_idx, r);
}

/* Keeps a record Redis refused (a malformed key) in m->parked, merged like
 * m->pending.  0, or -1 when out of memory. */
static int parked_add(struct meter *m, const struct meter_rec *r)
{
    if (vec_add_merged(&m->parked, &r->g->park_idx, r) < 0)
        return -1;
    atomic_store_explicit(&m->st_parked_recs, m->parked.n, RELAXED);
    return 0;
}

/*
 * Puts the refused records back into m->pending, so that they go with the
 * next batch: applied once their key is fixed, refused (and parked) again
 * otherwise.  Called at the flusher's tick, so at most once per interval,
 * and once more for the final flush.
 */
static void flusher_unpark(struct meter *m)
{
    if (m->parked.n == 0)
        return;
    for (size_t i = 0; i < m->parked.n; i++)
        m->parked.v[i].g->park_idx = -1;
    for (size_t i = 0; i < m->parked.n; i++) {
        const struct meter_rec *r = &m->parked.v[i];
        if (pending_add(m, r) < 0)
            log_err_ratelimited("meter-oom", "%s: out of memory: counts of %s lost", __func__, r->g->name);
    }
    m->parked.n = 0;
    atomic_store_explicit(&m->st_parked_recs, 0, RELAXED);
    atomic_store_explicit(&m->st_pending_recs, m->pending.n, RELAXED);
}

/* Moves every worker's handoff into m->pending, merged per (tenant, day). */
static void flusher_drain(struct meter *m)
{
    double now = mono_now();
    for (int i = 0; i < m->n_workers; i++) {
        struct meter_handoff *ho = &m->ho[i];
        pthread_mutex_lock(&ho->mu);
        struct meter_vec tmp = ho->vec;
        ho->vec = m->spare;
        pthread_mutex_unlock(&ho->mu);
        for (size_t j = 0; j < tmp.n; j++) {
            struct meter_rec *r = &tmp.v[j];
            struct meter_gt *g = r->g;
            atomic_fetch_add_explicit(&g->tot_in, r->in, RELAXED);
            atomic_fetch_add_explicit(&g->tot_out, r->out, RELAXED);
            atomic_fetch_add_explicit(&g->tot_req, r->req, RELAXED);
            g->last_active = now;
            if (m->has_redis && !g->bad_name && !g->on_pol && atomic_load_explicit(&g->cap, RELAXED) < 0) {
                g->on_pol = 1;
                g->pol_next = m->polq;
                m->polq = g;
            }
            if (!m->has_redis || g->bad_name) {
                if (g->bad_name)
                    log_err_ratelimited("meter-bad-tenant", "%s: tenant id \"%.64s\" cannot be a Redis key: "
                                        "counted in /metrics only", __func__, g->name);
                /* counters in memory only: the reserved part still feeds local enforcement */
                if (r->day / 100 == g->lease_month)
                    g->acked_rsv += (int64_t)r->rsv;
                continue;
            }
            if (pending_add(m, r) < 0)
                log_err_ratelimited("meter-oom", "%s: out of memory: counts of %s lost", __func__, g->name);
        }
        tmp.n = 0;
        m->spare = tmp;
    }
    atomic_store_explicit(&m->st_pending_recs, m->pending.n, RELAXED);
}

static void batch_free(struct meter_batch *b)
{
    if (!b)
        return;
    if (b->argv)
        for (int i = 2; i < b->argc; i++)
            free(b->argv[i]);
    free(b->argv);
    free(b->lens);
    free(b->recs);
    free(b);
}

static char *str_of_u64(uint64_t v)
{
    char *s = NULL;
    if (asprintf(&s, "%" PRIu64, v) < 0)
        return NULL;
    return s;
}

/* Builds a batch (argv included) from n records. */
static struct meter_batch *batch_build(struct meter *m, const struct meter_rec *recs, size_t n)
{
    struct meter_batch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->seq = ++m->next_seq;
    b->n = n;
    b->recs = malloc(n * sizeof(*recs));
    b->argc = 3 + 1 + 3 * (int)n + 2 + 4 * (int)n;
    b->argv = calloc((size_t)b->argc, sizeof(char *));
    b->lens = calloc((size_t)b->argc, sizeof(size_t));
    if (!b->recs || !b->argv || !b->lens)
        goto fail;
    memcpy(b->recs, recs, n * sizeof(*recs));
    int a = 2;
    if (asprintf(&b->argv[a++], "%zu", 1 + 3 * n) < 0)
        goto fail;
    if (!(b->argv[a++] = key_applied(m)))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!(b->argv[a++] = key_usage(m, recs[i].g->name, recs[i].day / 100)))
            goto fail;
        if (!(b->argv[a++] = key_usage(m, recs[i].g->name, recs[i].day)))
            goto fail;
        if (!(b->argv[a++] = key_lease(m, recs[i].g->name, recs[i].day / 100)))
            goto fail;
    }
    if (!(b->argv[a++] = strdup(m->run_id)))
        goto fail;
    if (!(b->argv[a++] = str_of_u64(b->seq)))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!(b->argv[a++] = str_of_u64(recs[i].in)) || !(b->argv[a++] = str_of_u64(recs[i].out)) ||
            !(b->argv[a++] = str_of_u64(recs[i].req)) || !(b->argv[a++] = str_of_u64(recs[i].rsv)))
            goto fail;
    }
    for (int i = 2; i < b->argc; i++)
        b->lens[i] = strlen(b->argv[i]);
    return b;
fail:
    batch_free(b);
    return NULL;
}

/* Cuts m->pending into batches when nothing is queued. */
static void flusher_cut(struct meter *m)
{
    if (m->queue || m->pending.n == 0)
        return;
    for (size_t i = 0; i < m->pending.n; i++)
        m->pending.v[i].g->pend_idx = -1;
    size_t off = 0;
    while (off < m->pending.n) {
        size_t n = m->pending.n - off;
        if (n > MAX_BATCH)
            n = MAX_BATCH;
        struct meter_batch *b = batch_build(m, m->pending.v + off, n);
        if (!b) {
            /* keep what was not cut for the next tick (indices rebuilt below) */
            log_err_ratelimited("meter-oom-batch", "%s: out of memory building a batch", __func__);
            break;
        }
        if (m->queue_tail)
            m->queue_tail->next = b;
        else
            m->queue = b;
        m->queue_tail = b;
        off += n;
    }
    memmove(m->pending.v, m->pending.v + off, (m->pending.n - off) * sizeof(*m->pending.v));
    m->pending.n -= off;
    for (size_t i = 0; i < m->pending.n; i++)
        m->pending.v[i].g->pend_idx = (ssize_t)i;
    size_t q = 0;
    for (struct meter_batch *b = m->queue; b; b = b->next)
        q++;
    atomic_store_explicit(&m->st_queued_batches, q, RELAXED);
    atomic_store_explicit(&m->st_pending_recs, m->pending.n, RELAXED);
}

static void flusher_send(struct meter *m);
static void flusher_check_final(struct meter *m);

static void script_loaded_cb(void *arg, const struct redis_reply *r, const char *err)
{
    char *dst = arg;
    size_t len = 0;
    const char *s = (!err && r && redis_reply_type(r) == REDIS_T_STRING) ? redis_reply_str(r, &len) : NULL;
    if (s && len == 40) {
        memcpy(dst, s, 40);
        dst[40] = 0;
    }
}

static void scripts_load(struct meter *m)
{
    redis_cmdf(m->rc, script_loaded_cb, m->sha_flush, "SCRIPT LOAD %s", flush_lua);
    redis_cmdf(m->rc, script_loaded_cb, m->sha_lease, "SCRIPT LOAD %s", lease_lua);
}

static int reply_is_noscript(const struct redis_reply *r)
{
    size_t len;
    const char *s;
    return r && redis_reply_type(r) == REDIS_T_ERROR && (s = redis_reply_str(r, &len)) &&
           len >= 8 && strncmp(s, "NOSCRIPT", 8) == 0;
}

static void queue_stats(struct meter *m)
{
    size_t q = 0;
    for (struct meter_batch *x = m->queue; x; x = x->next)
        q++;
    atomic_store_explicit(&m->st_queued_batches, q, RELAXED);
    atomic_store_explicit(&m->st_pending_recs, m->pending.n, RELAXED);
}

/*
 * The flush script refused batch b, the head of the queue: r = {i, why, ...}
 * names its records with a malformed key.  Nothing of b was applied and its
 * seq was not recorded, so b is dropped: the refused records are parked
 * (sent again at the next interval, flusher_unpark), the others go back to
 * m->pending, to leave at once in a new batch with a new seq (seqs only
 * need to increase).  Their rsv travels with them: it stays in what this
 * instance holds (acked_rsv does not grow) until a flush applies it.
 * 0, or -1 when r is not such a reply (then b is retried as after an error).
 */
static int batch_refused(struct meter *m, struct meter_batch *b, const struct redis_reply *r)
{
    size_t n = redis_reply_len(r);
    if (n == 0 || n % 2)
        return -1;
    unsigned char *bad = calloc(b->n, 1);
    if (!bad)
        return -1;
    for (size_t k = 0; k < n; k += 2) {
        const struct redis_reply *ix = redis_reply_elem(r, k), *why = redis_reply_elem(r, k + 1);
        if (!ix || !why || redis_reply_type(ix) != REDIS_T_INTEGER || redis_reply_type(why) != REDIS_T_STRING ||
            redis_reply_int(ix) < 0 || (unsigned long long)redis_reply_int(ix) >= b->n) {
            free(bad);
            return -1;
        }
        bad[redis_reply_int(ix)] = 1;
    }
    for (size_t k = 0; k < n; k += 2) {
        const struct meter_rec *rec = &b->recs[redis_reply_int(redis_reply_elem(r, k))];
        size_t len = 0;
        const char *why = redis_reply_str(redis_reply_elem(r, k + 1), &len);
        char rk[128];
        snprintf(rk, sizeof(rk), "meter-badkey:%.64s:%d", rec->g->name, rec->day);
        log_err_ratelimited(rk, "meter: %.*s: counts of tenant %.64s day %d held back, sent again every flush "
                            "interval until the key is fixed", (int)(len > 400 ? 400 : len), why, rec->g->name,
                            rec->day);
    }
    m->queue = b->next;
    if (!m->queue)
        m->queue_tail = NULL;
    uint64_t nbad = 0;
    for (size_t i = 0; i < b->n; i++) {
        const struct meter_rec *rec = &b->recs[i];
        nbad += bad[i];
        if ((bad[i] ? parked_add(m, rec) : pending_add(m, rec)) < 0)
            log_err_ratelimited("meter-oom", "%s: out of memory: counts of %s lost", __func__, rec->g->name);
    }
    atomic_fetch_add_explicit(&m->st_bad_recs, nbad, RELAXED);
    free(bad);
    batch_free(b);
    queue_stats(m);
    return 0;
}

static void batch_reply(void *arg, const struct redis_reply *r, const char *err)
{
    struct meter *m = arg;
    struct meter_batch *b = m->queue;
    if (!b)
        return;
    b->inflight = 0;
    if (!err && r && redis_reply_type(r) == REDIS_T_ARRAY && batch_refused(m, b, r) == 0) {
        /* the rest goes now: each refusal parks at least one record, so this ends */
        if (!m->queue)
            flusher_cut(m);
        flusher_send(m);
        flusher_check_final(m);
        return;
    }
    if (err || !r || redis_reply_type(r) != REDIS_T_INTEGER) {
        if (reply_is_noscript(r)) {
            m->sha_flush[0] = 0;   /* resend at once with EVAL, same seq */
            if (m->rc)
                scripts_load(m);
            flusher_send(m);
            return;
        }
        size_t len = 0;
        const char *s = r ? redis_reply_str(r, &len) : NULL;
        atomic_fetch_add_explicit(&m->st_flush_err, 1, RELAXED);
        log_err_ratelimited("meter-flush", "%s: flush seq %" PRIu64 " failed (will retry): %s", __func__,
                            b->seq, err ? err : s ? s : "unexpected reply");
        /* Not at once: an error that stays (a key of the wrong type) would
         * otherwise be resent in a loop, at the final flush as fast as
         * Redis answers.  Whatever runs the flusher next (tick, handoff,
         * the final flush's 50 ms tick) resends after the pause. */
        m->flush_retry_at = mono_now() + FLUSH_RETRY_S;
        flusher_check_final(m);
        return;
    }
    if (redis_reply_int(r) == 0)
        atomic_fetch_add_explicit(&m->st_flush_dup, 1, RELAXED);
    atomic_fetch_add_explicit(&m->st_flush_ok, 1, RELAXED);
    for (size_t i = 0; i < b->n; i++) {
        struct meter_gt *g = b->recs[i].g;
        if (b->recs[i].day / 100 == g->lease_month)
            g->acked_rsv += (int64_t)b->recs[i].rsv;
    }
    m->queue = b->next;
    if (!m->queue)
        m->queue_tail = NULL;
    batch_free(b);
    queue_stats(m);
    if (!m->queue)
        flusher_cut(m);   /* what was handed off while this batch was in flight goes at once */
    flusher_send(m);
    flusher_check_final(m);
}

/* Sends the head of the queue unless it is already on its way. */
static void flusher_send(struct meter *m)
{
    struct meter_batch *b = m->queue;
    if (!b || b->inflight || !m->rc || !redis_conn_is_up(m->rc))
        return;
    if (m->flush_retry_at > 0 && mono_now() < m->flush_retry_at)
        return;
    m->flush_retry_at = 0;
    if (m->sha_flush[0]) {
        b->argv[0] = "EVALSHA";
        b->argv[1] = m->sha_flush;
    } else {
        b->argv[0] = "EVAL";
        b->argv[1] = (char *)flush_lua;
    }
    b->lens[0] = strlen(b->argv[0]);
    b->lens[1] = strlen(b->argv[1]);
    if (redis_cmd(m->rc, batch_reply, m, b->argc, (const char **)b->argv, b->lens) == 0) {
        b->inflight = 1;
        b->tries++;
    }
}

/* ---------------------------------------------------------------- leases -- */

static int current_month(void)
{
    return meter_utc_day(wall_now_s()) / 100;
}

/*
 * What this instance holds against the cap: unreserved lease + bytes taken
 * from the lease that Redis has not counted yet (reserved and not counted,
 * or counted and not flushed; acked_rsv only grows by bytes that reached the
 * usage in the same flush).
 */
static int64_t gt_held(struct meter_gt *g)
{
    int64_t avail = atomic_load_explicit(&g->avail, RELAXED);
    /* avail < 0: heads counted on an empty lease, a debt included in unflushed */
    int64_t unflushed = g->granted - avail - g->acked_rsv;
    return (avail > 0 ? avail : 0) + (unflushed > 0 ? unflushed : 0);
}

static int64_t gt_want(struct meter *m, struct meter_gt *g)
{
    /* About two flush intervals of traffic at the recent rate, at least 4 minimal slices. */
    double w = g->rate * m->interval * 2;
    int64_t want = w > 1e15 ? (int64_t)1e15 : (int64_t)w;
    if (want < 4 * METER_MIN_SLICE)
        want = 4 * METER_MIN_SLICE;
    return want;
}

static void gt_set_low_water(struct meter *m, struct meter_gt *g)
{
    double lw = g->rate * m->interval / 2;
    int64_t low = lw > 1e15 ? (int64_t)1e15 : (int64_t)lw;
    if (low < METER_MIN_SLICE)
        low = METER_MIN_SLICE;
    atomic_store_explicit(&g->low_water, low, RELAXED);
}

/* Gives this month's lease state a fresh start (new month, or first sight). */
static void gt_lease_reset(struct meter *m, struct meter_gt *g, int month)
{
    int64_t cap = atomic_load_explicit(&g->cap, RELAXED);
    /* epoch first, then avail: see meter_tenant_put(). */
    atomic_fetch_add(&g->epoch, 1);
    atomic_store(&g->avail, 0);
    atomic_store_explicit(&g->over, 0, RELAXED);
    g->granted = 0;
    g->acked_rsv = 0;
    g->lease_month = month;
    g->lease_cap = cap;
    g->usage_seen = 0;
    g->rate_prev_consumed = 0;
    /* A new month starts with the whole cap; with no history we know nothing. */
    g->local_remaining = cap;
    atomic_store_explicit(&g->known, !m->has_redis || g->last_lease > 0, RELAXED);
}

/* Local grant from the last known remaining budget (Redis absent or unreachable). */
static void gt_local_grant(struct meter *m, struct meter_gt *g)
{
    if (!atomic_load_explicit(&g->known, RELAXED))
        return;   /* never seen: meter_allow serves it */
    int64_t want = gt_want(m, g) - atomic_load_explicit(&g->avail, RELAXED);
    if (want < METER_MIN_SLICE)
        want = METER_MIN_SLICE;
    int64_t slice = meter_lease_slice(g->local_remaining, 1, 1, METER_MIN_SLICE, want);
    if (slice > 0) {
        g->local_remaining -= slice;
        g->granted += slice;
        atomic_fetch_add_explicit(&g->avail, slice, RELAXED);
        atomic_store_explicit(&g->over, 0, RELAXED);
    } else if (atomic_load_explicit(&g->avail, RELAXED) <= 0) {
        atomic_store_explicit(&g->over, 1, RELAXED);
    }
}

static void lease_reply(void *arg, const struct redis_reply *r, const char *err);

struct lease_req {
    struct meter_gt *g;
    int month;
    int release;
    int64_t cap;
};

/* Sends a lease (or release) request for g.  0 sent, -1 not. */
static int lease_send(struct meter *m, struct meter_gt *g, int release)
{
    if (!m->rc || !redis_conn_is_up(m->rc) || g->lease_inflight)
        return -1;
    struct lease_req *lr = malloc(sizeof(*lr));
    if (!lr)
        return -1;
    lr->g = g;
    lr->month = g->lease_month;
    lr->release = release;
    lr->cap = atomic_load_explicit(&g->cap, RELAXED);
    int64_t held = gt_held(g);
    /* The batch at the head of the queue may have been applied by Redis
     * (its reply on its way, or lost) without acked_rsv knowing yet: the
     * script takes its rsv out of held if so.  Only the head can be: batches
     * are sent one at a time, in order, on this same connection. */
    uint64_t iseq = 0, irsv = 0;
    if (m->queue && m->queue->tries > 0) {
        iseq = m->queue->seq;
        for (size_t i = 0; i < m->queue->n; i++)
            if (m->queue->recs[i].g == g && m->queue->recs[i].day / 100 == g->lease_month)
                irsv += m->queue->recs[i].rsv;
    }
    char *k1 = key_usage(m, g->name, g->lease_month);
    char *k2 = key_lease(m, g->name, g->lease_month);
    char *k3 = key_applied(m);
    char *k4 = key_tenant(m, g->name);
    char cap[32], helds[32], minsl[32], kk[16], want[32], ttl[32], iseqs[32], irsvs[32];
    snprintf(cap, sizeof(cap), "%" PRId64, lr->cap);
    snprintf(helds, sizeof(helds), "%" PRId64, held);
    snprintf(minsl, sizeof(minsl), "%d", METER_MIN_SLICE);
    snprintf(kk, sizeof(kk), "%d", METER_LEASE_K);
    /* Ask for what tops the lease up to about two intervals of traffic: a
     * periodic refresh of a well-stocked lease asks for 0 and only updates
     * what we hold (and its expiry). */
    int64_t w = gt_want(m, g) - atomic_load_explicit(&g->avail, RELAXED);
    snprintf(want, sizeof(want), "%" PRId64, w > 0 ? w : 0);
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_MS);
    snprintf(iseqs, sizeof(iseqs), "%" PRIu64, iseq);
    snprintf(irsvs, sizeof(irsvs), "%" PRIu64, irsv);
    const char *argv[17] = { m->sha_lease[0] ? "EVALSHA" : "EVAL", m->sha_lease[0] ? m->sha_lease : lease_lua,
                             "4", k1, k2, k3, k4, m->run_id, cap, helds, minsl, kk, want, ttl, release ? "1" : "0",
                             iseqs, irsvs };
    size_t lens[17];
    for (int i = 0; i < 17; i++)
        lens[i] = argv[i] ? strlen(argv[i]) : 0;
    int rc = -1;
    if (k1 && k2 && k3 && k4 && redis_cmd(m->rc, lease_reply, lr, 17, argv, lens) == 0) {
        rc = 0;
        g->lease_inflight = 1;
        g->last_lease = mono_now();
        atomic_fetch_add_explicit(&m->st_lease_req, 1, RELAXED);
        if (release)
            m->final_pending += atomic_load_explicit(&m->stopping, RELAXED) ? 1 : 0;
    } else {
        free(lr);
    }
    free(k1);
    free(k2);
    free(k3);
    free(k4);
    return rc;
}

static void flusher_policies(struct meter *m);

/*
 * Applies the policy the flusher read from Redis itself (lease reply, or the
 * poll of an uncapped tenant).  The suspended flag always; with a valid cap
 * (p->cap_bytes >= 0) the cap, cap_action and throttle_bps too.  No valid
 * cap in Redis (-1) leaves those three alone: routing lifts the cap within
 * its refresh, and an action or rate means nothing without a cap.  Published
 * like a worker's change (m->gmu, dirty list) and handled at once, and read
 * by workers' meter_allow() at its next call: a suspended tenant's
 * transfers are cut; a lowered cap drops the local lease and leases again
 * against it; a tenant over its cap switched from throttle to block has its
 * transfers cut (meter_allow() returns 0 without retry_ms), and a new
 * throttle_bps paces them from then on (the shared bucket reads the rate
 * at every call).  Flusher thread.
 */
static void flusher_redis_policy(struct meter *m, struct meter_gt *g, const struct tenant_policy *p)
{
    int changed = 0;
    pthread_mutex_lock(&m->gmu);
    if (p->cap_bytes >= 0 && gt_policy_differs(g, p)) {
        gt_store_policy(g, p);
        changed = 1;
    } else if (p->cap_bytes < 0 && atomic_load_explicit(&g->suspended, RELAXED) != p->suspended) {
        atomic_store_explicit(&g->suspended, p->suspended, RELAXED);
        changed = 1;
    }
    if (changed)
        gt_mark_dirty(m, g);
    pthread_mutex_unlock(&m->gmu);
    if (changed) {
        log_info("%s: tenant %.64s: policy from redis: cap %" PRId64 ", cap_action %s, throttle_bps %" PRId64
                 ", suspended %d", __func__, g->name, atomic_load_explicit(&g->cap, RELAXED),
                 atomic_load_explicit(&g->action, RELAXED) == CAP_THROTTLE ? "throttle" : "block",
                 atomic_load_explicit(&g->tbps, RELAXED), p->suspended);
        flusher_policies(m);
    }
}

/*
 * The policy poll: {cap_bytes, suspended, cap_action, throttle_bps} as HMGET
 * returns them, except that a value longer than routing accepts comes back
 * as "" without being read (HSTRLEN first: a 512 MB value copied into a
 * reply would stall Redis).
 */
static const char policy_lua[] =
    "local function f(n, max)\n"
    "  if redis.call('HSTRLEN', KEYS[1], n) > max then return '' end\n"
    "  return redis.call('HGET', KEYS[1], n)\n"
    "end\n"
    "return {f('cap_bytes', 18), f('suspended', 1), f('cap_action', 8), f('throttle_bps', 18)}\n";

static void policy_reply(void *arg, const struct redis_reply *r, const char *err)
{
    struct meter_gt *g = arg;
    struct meter *m = g->m;
    g->pol_inflight = 0;
    if (err || !r || redis_reply_type(r) != REDIS_T_ARRAY || redis_reply_len(r) < 2) {
        log_err_ratelimited("meter-policy", "%s: policy of %.64s: %s", __func__, g->name,
                            err ? err : "unexpected reply");
        return;
    }
    /* routing's parser, field by field: malformed counts as absent */
    struct tenant_policy p = { -1, CAP_BLOCK, 0, 0 };
    policy_field(&p, "cap_bytes", redis_reply_elem(r, 0));
    policy_field(&p, "suspended", redis_reply_elem(r, 1));
    if (redis_reply_len(r) >= 4) {
        policy_field(&p, "cap_action", redis_reply_elem(r, 2));
        policy_field(&p, "throttle_bps", redis_reply_elem(r, 3));
    }
    flusher_redis_policy(m, g, &p);
}

/*
 * Capped tenants learn Redis's policy from every lease reply; uncapped ones
 * that had traffic in the interval (flusher_drain puts them on m->polq) get
 * one policy poll (policy_lua), pipelined on the flusher's connection, so
 * a cap or suspension set during a transfer takes effect within about one
 * interval.  Never on the hot path.
 */
static void flusher_poll_policies(struct meter *m)
{
    /* Every worker's handoff runs the flusher: poll once per interval,
     * what queued meanwhile waits for the next. */
    double now = mono_now();
    if (!m->polq || now - m->pol_last < m->interval * 0.5)
        return;
    m->pol_last = now;
    int up = m->rc && redis_conn_is_up(m->rc);
    while (m->polq) {
        struct meter_gt *g = m->polq;
        m->polq = g->pol_next;
        g->pol_next = NULL;
        g->on_pol = 0;
        if (!up || g->pol_inflight || atomic_load_explicit(&g->cap, RELAXED) >= 0)
            continue;
        char *k = key_tenant(m, g->name);
        const char *argv[4] = { "EVAL", policy_lua, "1", k };
        size_t lens[4] = { 4, sizeof(policy_lua) - 1, 1, k ? strlen(k) : 0 };
        if (k && redis_cmd(m->rc, policy_reply, g, 4, argv, lens) == 0)
            g->pol_inflight = 1;
        free(k);
    }
}

static void lease_reply(void *arg, const struct redis_reply *r, const char *err)
{
    struct lease_req *lr = arg;
    struct meter_gt *g = lr->g;
    struct meter *m = g->m;
    g->lease_inflight = 0;
    int stopping = atomic_load_explicit(&m->stopping, RELAXED);
    if (lr->release && stopping && m->final_pending > 0)
        m->final_pending--;
    if (err || !r || redis_reply_type(r) != REDIS_T_ARRAY || redis_reply_len(r) < 4) {
        if (reply_is_noscript(r)) {
            m->sha_lease[0] = 0;
            if (m->rc)
                scripts_load(m);
        }
        size_t len = 0;
        const char *s = r ? redis_reply_str(r, &len) : NULL;
        atomic_fetch_add_explicit(&m->st_lease_err, 1, RELAXED);
        log_err_ratelimited("meter-lease", "%s: lease for %s failed: %s", __func__, g->name,
                            err ? err : s ? s : "unexpected reply");
        atomic_store_explicit(&g->renew, 1, RELAXED);   /* try again at the next chance */
        if (g->last_lease > 0)   /* known before a policy change: admission need not wait on a failing Redis */
            atomic_store_explicit(&g->known, 1, RELAXED);
        free(lr);
        flusher_check_final(m);
        return;
    }
    int64_t slice = redis_reply_int(redis_reply_elem(r, 0));
    int64_t rest = redis_reply_int(redis_reply_elem(r, 1));
    int64_t usage = redis_reply_int(redis_reply_elem(r, 3));
    struct tenant_policy rp;
    if (meter_lease_reply_tenant_policy(r, &rp) == 0)
        flusher_redis_policy(m, g, &rp);   /* a changed cap makes the check below drop this grant */
    if (lr->month != g->lease_month || lr->cap != g->lease_cap) {
        /* The month or the cap changed while the request was on its way:
         * the grant was computed for the old state, so it is not used; Redis
         * counts it as ours until the next request, which reports what we
         * really hold and so gives it back. */
        atomic_store_explicit(&g->renew, 1, RELAXED);
        free(lr);
        poke(m);
        return;
    }
    g->usage_seen = usage;
    g->local_remaining = rest > 0 ? rest : 0;
    atomic_store_explicit(&g->known, 1, RELAXED);
    if (!lr->release) {
        if (slice > 0) {
            g->granted += slice;
            atomic_fetch_add_explicit(&g->avail, slice, RELAXED);
            atomic_fetch_add_explicit(&m->st_lease_granted_bytes, (uint64_t)slice, RELAXED);
            atomic_store_explicit(&g->over, 0, RELAXED);
        } else if (rest <= 0) {
            atomic_fetch_add_explicit(&m->st_lease_denied, 1, RELAXED);
            atomic_store_explicit(&g->over, 1, RELAXED);
        }
    }
    free(lr);
    /* A worker may have asked again while this request was on its way. */
    if (atomic_load_explicit(&g->renew, RELAXED) && !stopping &&
        atomic_load_explicit(&g->avail, RELAXED) < atomic_load_explicit(&g->low_water, RELAXED) &&
        !atomic_load_explicit(&g->over, RELAXED)) {
        atomic_store_explicit(&g->renew, 0, RELAXED);
        lease_send(m, g, 0);
    } else {
        atomic_store_explicit(&g->renew, 0, RELAXED);
    }
    flusher_check_final(m);
}

/* Takes policy changes from the workers: capped list membership, cap changes. */
static void flusher_policies(struct meter *m)
{
    pthread_mutex_lock(&m->gmu);
    struct meter_gt *d = m->dirty;
    m->dirty = NULL;
    for (struct meter_gt *g = d; g; g = g->dirty_next)
        g->on_dirty = 0;
    pthread_mutex_unlock(&m->gmu);
    int month = current_month();
    while (d) {
        struct meter_gt *g = d;
        d = d->dirty_next;
        int64_t cap = atomic_load_explicit(&g->cap, RELAXED);
        if (cap >= 0 && !g->in_capped) {
            g->in_capped = 1;
            g->capped_next = m->capped;
            m->capped = g;
            gt_lease_reset(m, g, month);
            g->last_active = mono_now();
            atomic_store_explicit(&g->renew, 1, RELAXED);
        } else if (cap >= 0 && cap != g->lease_cap) {
            /* Cap changed: drop the local lease (what was not reserved goes
             * back) and lease again against the new cap. */
            int64_t back = atomic_exchange(&g->avail, 0);
            g->granted -= back;   /* a debt (back < 0) stays consumed */
            if (g->lease_cap >= 0)
                g->local_remaining += cap - g->lease_cap + back;
            g->lease_cap = cap;
            atomic_store_explicit(&g->renew, 1, RELAXED);
            if (!m->has_redis || !atomic_load_explicit(&m->redis_up, RELAXED))
                atomic_store_explicit(&g->over, g->local_remaining <= 0, RELAXED);
        } else if (cap < 0 && g->in_capped) {
            int64_t back = atomic_exchange(&g->avail, 0);
            g->granted -= back;   /* a debt (back < 0) stays consumed */
            atomic_store_explicit(&g->over, 0, RELAXED);
            lease_send(m, g, 1);
            g->lease_cap = -1;
            /* stays on the capped list (cheap) until the sweep in flusher_leases drops it */
        }
    }
}

/*
 * The lease pass, run at every tick and poke: month change, rate estimate,
 * renewals, releases of idle leases, local grants when Redis is away.
 */
static void flusher_leases(struct meter *m, int tick)
{
    int month = current_month();
    double now = mono_now();
    int up = m->has_redis && m->rc && redis_conn_is_up(m->rc);
    struct meter_gt **pp = &m->capped;
    while (*pp) {
        struct meter_gt *g = *pp;
        int64_t cap = atomic_load_explicit(&g->cap, RELAXED);
        if (cap < 0) {
            if (!g->lease_inflight) {
                *pp = g->capped_next;
                g->in_capped = 0;
                g->lease_cap = -1;
                continue;
            }
            pp = &g->capped_next;
            continue;
        }
        pp = &g->capped_next;
        if (g->lease_month != month) {
            int64_t back = atomic_exchange(&g->avail, 0);
            (void)back;
            gt_lease_reset(m, g, month);
            atomic_store_explicit(&g->known, 1, RELAXED);   /* a new month: the whole cap remains */
            atomic_store_explicit(&g->renew, 1, RELAXED);
        }
        if (tick) {
            int64_t consumed = g->granted - atomic_load_explicit(&g->avail, RELAXED);
            double inst = (double)(consumed - g->rate_prev_consumed) / m->interval;
            if (inst < 0)
                inst = 0;
            g->rate = g->rate * 0.5 + inst * 0.5;
            g->rate_prev_consumed = consumed;
            gt_set_low_water(m, g);
        }
        int renew = atomic_load_explicit(&g->renew, RELAXED);
        int64_t avail = atomic_load_explicit(&g->avail, RELAXED);
        if (renew)
            g->last_active = now;
        int idle = now - g->last_active > LEASE_IDLE_S;
        if (!up) {
            if (renew || (!idle && avail < atomic_load_explicit(&g->low_water, RELAXED))) {
                atomic_store_explicit(&g->renew, 0, RELAXED);
                gt_local_grant(m, g);
            }
            continue;
        }
        if (g->lease_inflight)
            continue;
        if (idle && avail > 0 && !renew) {
            /* Give an idle lease back so that other instances can use it. */
            int64_t back = atomic_exchange(&g->avail, 0);
            g->granted -= back;   /* a debt (back < 0) stays consumed */
            lease_send(m, g, 1);
        } else if (renew || (tick && !idle) ||
                   (!idle && avail < atomic_load_explicit(&g->low_water, RELAXED) &&
                    !atomic_load_explicit(&g->over, RELAXED))) {
            atomic_store_explicit(&g->renew, 0, RELAXED);
            if (lease_send(m, g, 0) != 0)
                atomic_store_explicit(&g->renew, 1, RELAXED);
        }
    }
}

/* --------------------------------------------------------- flusher loop -- */

static void redis_state(void *arg, int up)
{
    struct meter *m = arg;
    atomic_store_explicit(&m->redis_up, up, RELAXED);
    if (up) {
        scripts_load(m);
        /* anything that failed while Redis was away goes now (a command's
         * in-flight flag is cleared only by its callback, which redis.c calls
         * exactly once, so nothing is ever sent twice at the same time) */
        flusher_cut(m);
        flusher_send(m);
        flusher_leases(m, 0);
    } else {
        log_warn("%s: redis unreachable: counts kept in memory, caps enforced with local counts", __func__);
        /* A tenant made 'unknown' by a cap change whose lease never left
         * would be served without limit for the outage: it was known
         * before, so local grants enforce its cap meanwhile. */
        pthread_mutex_lock(&m->gmu);
        for (struct meter_gt *g = m->gall; g; g = g->all_next)
            if (g->last_lease > 0)
                atomic_store_explicit(&g->known, 1, RELAXED);
        pthread_mutex_unlock(&m->gmu);
    }
}

/* Takes what the workers handed off and sends it (a no-op while a batch is
 * in flight: the reply cuts what piled up meanwhile). */
static void flusher_flush(struct meter *m)
{
    flusher_drain(m);
    flusher_policies(m);
    flusher_cut(m);
    flusher_send(m);
}

/* A poke after a handoff sends at once; the tick retries after an outage. */
static void flusher_run(struct meter *m, int tick)
{
    if (tick)
        flusher_unpark(m);   /* records refused for a malformed key: once per interval */
    flusher_flush(m);
    flusher_leases(m, tick);
    flusher_poll_policies(m);
}

static void flusher_tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct meter *m = arg;
    if (!atomic_load_explicit(&m->stopping, RELAXED)) {
        flusher_run(m, 1);
        return;
    }
    flusher_check_final(m);
}

static void flusher_poke_cb(evutil_socket_t fd, short what, void *arg)
{
    struct meter *m = arg;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    if (atomic_load_explicit(&m->stopping, RELAXED)) {
        if (m->final_phase == 0) {
            /* Final flush: everything the workers handed off goes now. */
            m->final_phase = 1;
            flusher_unpark(m);   /* a last try for records refused for a malformed key */
            flusher_flush(m);
            struct timeval tv = { 0, 50000 };
            event_del(m->tick_ev);
            event_add(m->tick_ev, &tv);
        }
        flusher_check_final(m);
        return;
    }
    flusher_run(m, 0);
}

static void final_cmd_done(void *arg, const struct redis_reply *r, const char *err)
{
    struct meter *m = arg;
    if (m->final_pending > 0)
        m->final_pending--;
    flusher_check_final(m);
}

/*
 * Progress of the graceful stop: 1 = sending the last batches, 2 = giving
 * leases back and forgetting our applied seq, 3 = done.  Gives up at the
 * deadline (what is not acknowledged is logged as lost).
 */
/* Lost records listed one per line at a stop, at most. */
#define LOST_LINES_MAX 10000

/* seq: the batch it was sent in (its run's field of <p>meter:applied tells
 * whether Redis applied it), 0 when it was never sent. */
static void log_lost_rec(const struct meter *m, const struct meter_rec *r, uint64_t seq)
{
    log_err("meter: lost record: tenant %.128s day %d bytes_in %" PRIu64 " bytes_out %" PRIu64
            " requests %" PRIu64 " run %s batch %" PRIu64, r->g->name, r->day, r->in, r->out, r->req,
            m->run_id, seq);
}

static void flusher_check_final(struct meter *m)
{
    if (!atomic_load_explicit(&m->stopping, RELAXED) || m->final_phase == 0 || m->final_phase == 3)
        return;
    int up = m->rc && redis_conn_is_up(m->rc);
    if (m->final_phase == 1) {
        if (m->queue && up)
            flusher_send(m);
        if (!m->queue && m->pending.n == 0) {
            m->final_phase = 2;
            if (up) {
                for (struct meter_gt *g = m->capped; g; g = g->capped_next) {
                    int64_t back = atomic_exchange(&g->avail, 0);
                    g->granted -= back;   /* a debt (back < 0) stays consumed */
                    g->lease_inflight = 0;
                    lease_send(m, g, 1);
                }
                char *k = key_applied(m);
                /* no batch of this run can arrive any more: forget its seq */
                if (k && redis_cmdf(m->rc, final_cmd_done, m, "HDEL %s %s", k, m->run_id) == 0)
                    m->final_pending++;
                free(k);
            }
        }
    }
    if (m->final_phase == 2 && (m->final_pending <= 0 || !up))
        m->final_phase = 3;
    if (m->final_phase == 3 || mono_now() > m->stop_deadline || !m->has_redis) {
        /* Lost: what is not acknowledged at the deadline, and the records
         * Redis refused for a malformed key at the final flush too (no
         * reason to wait for the deadline for those: nothing else will
         * send them). */
        if (m->queue || m->pending.n || m->parked.n) {
            uint64_t lost_recs = m->pending.n + m->parked.n;
            for (struct meter_batch *b = m->queue; b; b = b->next)
                lost_recs += b->n;
            log_err("%s: %s%" PRIu64 " unflushed meter records lost (%zu refused for a malformed key)", __func__,
                    m->final_phase != 3 ? "stop deadline passed: " : "", lost_recs, m->parked.n);
            /* One line per record, so that billing can reconcile what Redis
             * never got (batch 0: never applied). */
            uint64_t shown = 0;
            for (size_t i = 0; i < m->parked.n && shown < LOST_LINES_MAX; i++, shown++)
                log_lost_rec(m, &m->parked.v[i], 0);
            for (size_t i = 0; i < m->pending.n && shown < LOST_LINES_MAX; i++, shown++)
                log_lost_rec(m, &m->pending.v[i], 0);
            for (struct meter_batch *b = m->queue; b && shown < LOST_LINES_MAX; b = b->next)
                for (size_t i = 0; i < b->n && shown < LOST_LINES_MAX; i++, shown++)
                    log_lost_rec(m, &b->recs[i], b->seq);
            if (shown < lost_recs)
                log_err("meter: %" PRIu64 " more lost records not listed", lost_recs - shown);
        }
        m->final_phase = 3;
        event_base_loopbreak(m->base);
    }
}

static void *flusher_main(void *arg)
{
    struct meter *m = arg;
    event_base_dispatch(m->base);
    return NULL;
}

void meter_stop(struct meter *m, double timeout_s)
{
    if (!m)
        return;
    if (m->started) {
        m->stop_deadline = mono_now() + (timeout_s > 0 ? timeout_s : 0);
        atomic_store_explicit(&m->stopping, 1, RELAXED);
        poke(m);
        pthread_join(m->th, NULL);
    }
    if (m->rc)
        redis_conn_free(m->rc);
    if (m->tick_ev)
        event_free(m->tick_ev);
    if (m->poke_ev)
        event_free(m->poke_ev);
    if (m->base)
        event_base_free(m->base);
    if (m->poke_fd >= 0)
        close(m->poke_fd);
    while (m->queue) {
        struct meter_batch *b = m->queue;
        m->queue = b->next;
        batch_free(b);
    }
    free(m->pending.v);
    free(m->spare.v);
    free(m->parked.v);
    for (int i = 0; i < m->n_workers; i++) {
        free(m->ho[i].vec.v);
        pthread_mutex_destroy(&m->ho[i].mu);
    }
    free(m->ho);
    struct meter_gt *g = m->gall;
    while (g) {
        struct meter_gt *nx = g->all_next;
        free(g->name);
        free(g);
        g = nx;
    }
    free(m->gtab);
    pthread_mutex_destroy(&m->gmu);
    free(m);
}

/* ---------------------------------------------------------------- /metrics -- */

int meter_tenant_totals(struct meter *m, const char *tenant, uint64_t *bytes_in, uint64_t *bytes_out,
                        uint64_t *requests)
{
    pthread_mutex_lock(&m->gmu);
    struct meter_gt *g = gt_find_locked(m, tenant, hash_str(tenant));
    if (g) {
        *bytes_in = atomic_load_explicit(&g->tot_in, RELAXED);
        *bytes_out = atomic_load_explicit(&g->tot_out, RELAXED);
        *requests = atomic_load_explicit(&g->tot_req, RELAXED);
    }
    pthread_mutex_unlock(&m->gmu);
    return g ? 0 : -1;
}

void meter_write_metrics(FILE *f, void *arg)
{
    struct meter *m = arg;
    char esc[1024];
    pthread_mutex_lock(&m->gmu);
    fprintf(f, "# HELP tollgate_tenant_bytes_total Bytes metered per tenant (handed to the flusher).\n"
               "# TYPE tollgate_tenant_bytes_total counter\n");
    for (struct meter_gt *g = m->gall; g; g = g->all_next) {
        meter_escape_label(g->name, esc, sizeof(esc));
        fprintf(f, "tollgate_tenant_bytes_total{tenant=\"%s\",direction=\"in\"} %" PRIu64 "\n", esc,
                atomic_load_explicit(&g->tot_in, RELAXED));
        fprintf(f, "tollgate_tenant_bytes_total{tenant=\"%s\",direction=\"out\"} %" PRIu64 "\n", esc,
                atomic_load_explicit(&g->tot_out, RELAXED));
    }
    fprintf(f, "# HELP tollgate_tenant_requests_total Requests metered per tenant.\n"
               "# TYPE tollgate_tenant_requests_total counter\n");
    for (struct meter_gt *g = m->gall; g; g = g->all_next) {
        meter_escape_label(g->name, esc, sizeof(esc));
        fprintf(f, "tollgate_tenant_requests_total{tenant=\"%s\"} %" PRIu64 "\n", esc,
                atomic_load_explicit(&g->tot_req, RELAXED));
    }
    fprintf(f, "# HELP tollgate_tenant_over_cap 1 while the tenant is over its cap on this instance.\n"
               "# TYPE tollgate_tenant_over_cap gauge\n");
    for (struct meter_gt *g = m->gall; g; g = g->all_next) {
        if (atomic_load_explicit(&g->cap, RELAXED) < 0)
            continue;
        meter_escape_label(g->name, esc, sizeof(esc));
        fprintf(f, "tollgate_tenant_over_cap{tenant=\"%s\"} %d\n", esc,
                atomic_load_explicit(&g->over, RELAXED) && atomic_load_explicit(&g->avail, RELAXED) <= 0);
    }
    pthread_mutex_unlock(&m->gmu);
    fprintf(f, "# TYPE tollgate_meter_flushes_total counter\ntollgate_meter_flushes_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_flush_ok, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_flush_duplicates_total counter\n"
               "tollgate_meter_flush_duplicates_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_flush_dup, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_flush_errors_total counter\ntollgate_meter_flush_errors_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_flush_err, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_pending_records gauge\ntollgate_meter_pending_records %" PRIu64 "\n",
            atomic_load_explicit(&m->st_pending_recs, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_queued_batches gauge\ntollgate_meter_queued_batches %" PRIu64 "\n",
            atomic_load_explicit(&m->st_queued_batches, RELAXED));
    fprintf(f, "# HELP tollgate_meter_bad_key_records_total Flush records Redis refused for a malformed key "
               "(each refusal).\n# TYPE tollgate_meter_bad_key_records_total counter\n"
               "tollgate_meter_bad_key_records_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_bad_recs, RELAXED));
    fprintf(f, "# HELP tollgate_meter_bad_key_pending_records Records held back in memory until their key "
               "is fixed.\n# TYPE tollgate_meter_bad_key_pending_records gauge\n"
               "tollgate_meter_bad_key_pending_records %" PRIu64 "\n",
            atomic_load_explicit(&m->st_parked_recs, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_lease_requests_total counter\n"
               "tollgate_meter_lease_requests_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_lease_req, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_lease_errors_total counter\ntollgate_meter_lease_errors_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_lease_err, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_lease_denied_total counter\ntollgate_meter_lease_denied_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_lease_denied, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_lease_granted_bytes_total counter\n"
               "tollgate_meter_lease_granted_bytes_total %" PRIu64 "\n",
            atomic_load_explicit(&m->st_lease_granted_bytes, RELAXED));
    fprintf(f, "# TYPE tollgate_meter_redis_up gauge\ntollgate_meter_redis_up %d\n",
            atomic_load_explicit(&m->redis_up, RELAXED));
}
