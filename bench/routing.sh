#!/bin/bash
# bench/routing.sh — Redis routing at scale: lookups, memory, overhead, change propagation.
#
# Debian packages (installed with apt-get when missing): redis-server, redis-tools,
#   nginx-light (or nginx), wrk, curl, python3, procps
#
# 1. Starts the bench backend (nginx), a redis-server on a free port, and loads
#    DOMAINS (1,000,000) tg:domain:h<i>.bench.test hashes, all routed to the
#    backend (bench/redis-load-domains.py).
# 2. Starts tollgate with --redis (one worker) and, for comparison, tollgate
#    with a static --route for h0.bench.test (no Redis).
# 3. Cold: wrk sends every request with a Host never requested before
#    (h100000 upwards), so each is a cache miss and a Redis round trip:
#    requests/s, tollgate CPU/request, Redis reads per request, RSS.
# 4. Hot: a 100,000-host hot set (h0..h99999) is requested once to fill the
#    cache, then wrk rotates over it; in the same run, interleaved round by
#    round: one host through Redis routing, the same host through the static
#    route.  Prints medians and ratios to static (target: Redis routing within
#    5% of static; a hot lookup adds no Redis round trip and < 1 us of CPU —
#    the CPU/request difference between redis-hot and static).  A second,
#    identical static tollgate (static2) runs in the same rounds as an A/A
#    control: its ratio to static is the noise floor of the others.
#    The CPU differences and ratios are taken round by round (each round runs
#    every contender back to back) and their median reported, which cancels
#    most of what a shared machine's load does to whole rounds.
# 5. In process (bench/route-lookup.c, compiled against $BUILD/libtg.a): the
#    ns per route_lookup() over the hot set, in order and at random, against
#    one host and a static route — the lookup's own CPU without the network
#    stack's noise.  Memory: tollgate's RSS growth per cached entry.
# 6. Change propagation: COUNT (100) changes of a domain's backends between two
#    backends written with HSET (nothing published); p50/p99 of the time until
#    a request through tollgate reaches the new backend (target p99 < 100 ms).
#
# Environment: BUILD=DIR (build tree with ./tollgate), DOMAINS=1000000,
#   HOT=100000, ROUNDS=5, DURATION=5, CONNS=64, CHANGES=100, TENANTS=1000 (domain i
#   belongs to tenant t<i mod TENANTS>; TENANTS=1 keeps per-tenant metering out of
#   the redis-hot vs static difference),
#   TG_REDIS_ARGS="..." (extra arguments for the Redis tollgate, e.g. a cache size),
#   KEEP_REDIS_PORT=P (use this Redis, already loaded, instead of starting one),
#   LOOKUP_ITERS=2000000 (lookups per mode and round in process; 0 skips that part),
#   PERF=1 (samples tollgate with perf during the redis-hot, redis-1 and static runs and
#   reports the CPU per request spent in the routing code and in the meter: what the
#   lookup costs inside the proxy, free of the noise in whole-process CPU figures)
# Quick run (~1 min): DOMAINS=200000 HOT=20000 ROUNDS=2 DURATION=2 CHANGES=20 bench/routing.sh

source "$(dirname "$0")/lib.sh"
bench_need pgrep:procps /usr/bin/python3:python3 redis-server:redis-server redis-cli:redis-tools nginx:nginx-light wrk:wrk curl:curl cc:gcc

DOMAINS=${DOMAINS:-1000000}
HOT=${HOT:-100000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
CHANGES=${CHANGES:-100}
LOOKUP_ITERS=${LOOKUP_ITERS:-2000000}
ZONE=bench.test
export BENCH_DIR
raise_nofile
[ "$HOT" -lt "$DOMAINS" ] || die "HOT must be smaller than DOMAINS"

# ---- backends: the bench backend, and a pair A/B for propagation ----
backend_start
PA=$(free_port); PB=$(free_port)
nginx_start pair "
    server { listen 127.0.0.1:$PA; location / { return 200 'A\n'; } }
    server { listen 127.0.0.1:$PB; location / { return 200 'B\n'; } }"
wait_port "$PA" && wait_port "$PB" || die "backend pair did not listen"

# ---- Redis with DOMAINS domains ----
if [ -n "${KEEP_REDIS_PORT:-}" ]; then
    REDIS_PORT=$KEEP_REDIS_PORT
    log "using Redis on $REDIS_PORT as loaded"
else
    mkdir -p "$WORK/redis"
    log "loading $DOMAINS domains into a new redis-server"
    eval "$($PY "$BENCH_DIR/redis-load-domains.py" --count "$DOMAINS" --zone "$ZONE" --tenants "${TENANTS:-1000}" \
        --backends "127.0.0.1:$BACKEND_PORT" --dir "$WORK/redis")"
    bench_track "$REDIS_PID"
fi
rcli() { redis-cli -p "$REDIS_PORT" "$@"; }
redis_mem=$(rcli info memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')

# redis_lranges — LRANGE calls Redis has executed so far.  Only route lookups
# send LRANGE (path rules, patterns), so this counts lookups that reached Redis
# independently of tollgate's own counters (the meter's scripts use HGETALL).
redis_lranges() {
    rcli info commandstats | awk -F'[_:=,]' '$1 == "cmdstat" && $2 == "lrange" { n = $4 } END { print n + 0 }'
}
# tg_misses — tollgate's route cache misses so far (from its /metrics).
tg_misses() { tg_metric tollgate_route_cache_misses_total; }
# tg_metric NAME — a value from the Redis tollgate's /metrics (0 when absent).
tg_metric() {
    curl -s -m 5 "http://127.0.0.1:$TR_ADMIN/metrics" |
        awk -v n="$1" '$1 == n { print $2; f = 1 } END { if (!f) print 0 }'
}

# route_lookup_build — compiles bench/route-lookup.c against the build tree's
# libtg.a and the libraries it was configured with (read from its Makefile);
# prints the binary's path, or nothing when that is not possible.
route_lookup_build() {
    local b libs
    b=$(dirname "$TOLLGATE")
    [ -f "$b/libtg.a" ] && [ -f "$b/Makefile" ] || { log "no $b/libtg.a: skipping the in-process lookup timing"; return 0; }
    libs=$(sed -n 's/^\(LIBEVENT_LIBS\|OPENSSL_LIBS\|NGHTTP2_LIBS\|HIREDIS_LIBS\|PCRE2_LIBS\|AX_PTHREAD_FLAGS\) = //p' "$b/Makefile" | tr '\n' ' ')
    # shellcheck disable=SC2086
    cc -O2 -std=gnu11 -D_GNU_SOURCE -I"$SRC_DIR" -I"$b" -o "$WORK/route-lookup" "$BENCH_DIR/route-lookup.c" \
        "$b/libtg.a" $libs -lm 2>"$WORK/route-lookup.build.log" ||
        { log "could not build bench/route-lookup.c: skipping it"; cat "$WORK/route-lookup.build.log" >&2; return 0; }
    echo "$WORK/route-lookup"
}

# ---- tollgate, Redis routing and static ----
tollgate_find
TR_PORT=$(free_port); TS_PORT=$(free_port); TR_ADMIN=$(free_port)
# shellcheck disable=SC2086
tollgate_start tg-redis --workers 1 --listen "127.0.0.1:$TR_PORT" --admin-listen "127.0.0.1:$TR_ADMIN" \
    --redis "redis://127.0.0.1:$REDIS_PORT" ${TG_REDIS_ARGS:-}
TR_PID=$TG_PID
tollgate_start tg-static --workers 1 --listen "127.0.0.1:$TS_PORT" --admin-listen off \
    --route "h0.$ZONE=127.0.0.1:$BACKEND_PORT"
TS_PID=$TG_PID
# An identical second static tollgate: the A/A control that shows how far two
# equal processes differ on this machine (the noise floor of the ratios).
TS2_PORT=$(free_port)
tollgate_start tg-static2 --workers 1 --listen "127.0.0.1:$TS2_PORT" --admin-listen off \
    --route "h0.$ZONE=127.0.0.1:$BACKEND_PORT"
TS2_PID=$TG_PID
wait_port "$TR_PORT" && wait_port "$TS_PORT" && wait_port "$TS2_PORT" ||
    { cat "$WORK"/tg-*.log >&2; die "tollgate did not listen"; }
for p in "$TR_PORT" "$TS_PORT" "$TS2_PORT"; do
    curl -sf -m 10 -o "$WORK/got" -H "Host: h0.$ZONE" "http://127.0.0.1:$p/small.txt" && cmp -s "$WORK/got" "$WORK/www/small.txt" ||
        { cat "$WORK"/tg-*.log >&2; die "tollgate on $p does not route h0.$ZONE to the backend"; }
done
sleep 0.5
rss_start=$(rss_kib "$TR_PID")

# run_wrk NAME PORT PID SECONDS [HOST_*=...] — one wrk run; prints a result line.
# Every run generates its requests with wrk-hosts.lua, so wrk's own cost is the
# same for all contenders; without HOST_* variables the Host is always h0.
run_wrk() {
    local name=$1 port=$2 pid=$3 d=$4; shift 4
    local t0 t1 r0 r1 m0 m1 out stat
    t0=$(cpu_ticks "$pid"); r0=$(redis_lranges); m0=$(tg_misses)
    out=$(env HOST_BASE=0 HOST_SPAN=1 HOST_OFFSET=0 "$@" HOST_FMT="h%d.$ZONE" \
        wrk -t1 -c"$CONNS" -d"${d}s" --latency -s "$BENCH_DIR/wrk-hosts.lua" \
        "http://127.0.0.1:$port/small.txt" 2>&1) || { echo "$out" >&2; die "wrk failed ($name)"; }
    t1=$(cpu_ticks "$pid"); r1=$(redis_lranges); m1=$(tg_misses)
    kill -0 "$pid" 2>/dev/null || die "tollgate died during $name"
    stat=$(grep '^WRKSTAT' <<<"$out") || { echo "$out" >&2; die "no WRKSTAT from wrk"; }
    [ "$pid" = "$TR_PID" ] || { m0=0; m1=0; }
    $PY - "$stat" "$t0" "$t1" "$r0" "$r1" "$CLK_TCK" "$(rss_kib "$pid")" "$m0" "$m1" <<'EOF'
import sys
kv = dict(x.split("=") for x in sys.argv[1].split()[1:])
t0, t1, r0, r1, hz, rss, m0, m1 = (int(x) for x in sys.argv[2:10])
n = int(kv["requests"]) or 1
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print("rps=%.1f p99_ms=%.3f cpu_us=%.3f misses=%.4f lranges=%.4f rss_kib=%d errors=%d requests=%d"
      % (n / (int(kv["duration_us"]) / 1e6), int(kv["p99_us"]) / 1e3,
         (t1 - t0) / hz * 1e6 / n, (m1 - m0) / n, (r1 - r0) / n, rss, errs, n))
EOF
}
field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k {print $2}'; }

RESULTS=${RESULTS:-$WORK/results.txt}
: > "$RESULTS"
log "$(bench_machine)"

# ---- cold: every request a host never requested before ----
offset=0
span=$((DOMAINS - HOT))
for r in $(seq "$ROUNDS"); do
    line=$(run_wrk redis-cold "$TR_PORT" "$TR_PID" "$DURATION" HOST_BASE="$HOT" HOST_SPAN="$span" HOST_OFFSET="$offset")
    offset=$((offset + $(field "$line" requests)))
    [ "$offset" -gt "$span" ] && log "warning: cold hosts exhausted ($offset > $span): later ones may be cached"
    echo "cold redis-cold $r $line" >> "$RESULTS"; log "cold $r: $line"
done
rss_cold=$(rss_kib "$TR_PID")

# ---- fill the hot set: each of the HOT hosts requested at least once ----
log "filling the hot set ($HOT hosts)"
done_n=0
while [ "$done_n" -lt "$HOT" ]; do
    line=$(run_wrk fill "$TR_PORT" "$TR_PID" 2 HOST_BASE=0 HOST_SPAN="$HOT" HOST_OFFSET="$done_n")
    done_n=$((done_n + $(field "$line" requests)))
done

# perf_start PID FILE SECONDS — samples PID with perf in the background (PERF=1).
PERF_PID=""
perf_start() {
    PERF_PID=""
    [ "${PERF:-0}" = 1 ] || return 0
    perf record -q -F 999 -o "$2" -p "$1" -- sleep "$3" >/dev/null 2>&1 &
    PERF_PID=$!
}
perf_wait() { if [ -n "$PERF_PID" ]; then wait "$PERF_PID" || true; fi; }
if [ "${PERF:-0}" = 1 ]; then command -v perf >/dev/null || die "PERF=1 needs perf (linux-perf)"; fi

# ---- hot: interleaved rounds of redis-hot (rotating), redis-1 (one host), static ----
for r in $(seq "$ROUNDS"); do
    order="redis-hot redis-1 static static2"
    [ $((r % 2)) = 0 ] && order="static2 static redis-1 redis-hot"
    for c in $order; do
        case $c in
            redis-hot|redis-1) perf_start "$TR_PID" "$WORK/perf.$c.$r" $((DURATION > 1 ? DURATION - 1 : 1)) ;;
            static) perf_start "$TS_PID" "$WORK/perf.$c.$r" $((DURATION > 1 ? DURATION - 1 : 1)) ;;
            *) PERF_PID="" ;;
        esac
        case $c in
            redis-hot) line=$(run_wrk "$c" "$TR_PORT" "$TR_PID" "$DURATION" HOST_BASE=0 HOST_SPAN="$HOT" HOST_OFFSET=$((r * 7919))) ;;
            redis-1)   line=$(run_wrk "$c" "$TR_PORT" "$TR_PID" "$DURATION") ;;
            static)    line=$(run_wrk "$c" "$TS_PORT" "$TS_PID" "$DURATION") ;;
            static2)   line=$(run_wrk "$c" "$TS2_PORT" "$TS2_PID" "$DURATION") ;;
        esac
        perf_wait
        echo "hot $c $r $line" >> "$RESULTS"; log "hot $c $r: $line"
    done
done
rss_hot=$(rss_kib "$TR_PID")
cached=$(tg_metric tollgate_route_cache_entries)

# ---- in process: the lookup's own CPU ----
lookup=""
if [ "$LOOKUP_ITERS" -gt 0 ]; then
    lk_bin=$(route_lookup_build)
    if [ -n "$lk_bin" ]; then
        lk_cache=$(sed -n 's/.*--route-cache-size[ =]\([0-9][0-9]*\).*/\1/p' <<<"${TG_REDIS_ARGS:-}")
        log "timing route_lookup() in process ($LOOKUP_ITERS lookups x 5 modes x $ROUNDS rounds)"
        lookup=$("$lk_bin" --port "$REDIS_PORT" --hot "$HOT" --zone "$ZONE" --iters "$LOOKUP_ITERS" \
            --rounds "$ROUNDS" ${lk_cache:+--cache "$lk_cache"} 2>"$WORK/route-lookup.log") ||
            { cat "$WORK/route-lookup.log" >&2; die "route-lookup failed"; }
        log "$(grep -v '^LOOKUP' <<<"$lookup" | tr '\n' ';')"
        if grep -q . "$WORK/route-lookup.log"; then cat "$WORK/route-lookup.log" >&2; fi
    fi
fi

# ---- change propagation ----
prop=$($PY "$BENCH_DIR/propagation.py" --tg-port "$TR_PORT" --redis-port "$REDIS_PORT" \
    --host "prop.$ZONE" --a "127.0.0.1:$PA" --b "127.0.0.1:$PB" --count "$CHANGES") ||
    { echo "$prop" >&2; die "propagation measurement failed"; }

echo
echo "# tollgate Redis routing, $DOMAINS domains of ${TENANTS:-1000} tenants in Redis (used_memory $redis_mem), 1 worker${TG_REDIS_ARGS:+, $TG_REDIS_ARGS} — $(bench_machine)"
$PY "$BENCH_DIR/report.py" "$RESULTS" --keys rps,p99_ms,cpu_us,misses,lranges,errors --base static
# perf_share FILE — "ROUTING METER" percent of FILE's samples in the routing code
# (routing/: route_, cache_, bal_, host_, match_ functions) and in the meter (meter_).
perf_share() {
    perf report -q -i "$1" --no-children --stdio --sort sym 2>/dev/null |
        awk '{ p = $1; sub("%", "", p); s = $NF }
             s ~ /^(route_|cache_|bal_|host_|match_)/ { r += p } s ~ /^meter_/ { m += p }
             END { printf "%.3f %.3f\n", r, m }'
}
PERFLINE=""
if [ "${PERF:-0}" = 1 ]; then
    for f in "$WORK"/perf.*; do
        [ -s "$f" ] || continue
        b=${f##*/perf.}
        PERFLINE+="${b%.*}:${b##*.}:$(perf_share "$f" | tr ' ' ':') "
    done
fi

$PY - "$RESULTS" "$(grep '^LOOKUP' <<<"$lookup" || true)" "$PERFLINE" <<'EOF'
import statistics, sys
from collections import defaultdict
v = defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.split()
    for kv in p[3:]:
        k, _, x = kv.partition("=")
        v[(p[0], p[1], k)][p[2]] = float(x)
def med(s, c, k):
    x = list(v[(s, c, k)].values())
    return statistics.median(x) if x else float("nan")
def paired(c, k, op):
    # the median over rounds of (contender op static), both from the same round
    a, b = v[("hot", c, k)], v[("hot", "static", k)]
    x = [op(a[r], b[r]) for r in a if r in b]
    return statistics.median(x) if x else float("nan")
diff = lambda c: paired(c, "cpu_us", lambda x, y: x - y)
ratio = lambda c: paired(c, "rps", lambda x, y: x / y)
print()
print("hot lookup CPU (median over rounds of the CPU/request difference to static in the same round): "
      "redis-hot %+.2f us, redis-1 %+.2f us (target < 1 us; A/A control static2 %+.2f us)"
      % (diff("redis-hot"), diff("redis-1"), diff("static2")))
print("throughput with Redis routing / static routes (median of per-round ratios): redis-hot %.3f, "
      "redis-1 %.3f (target >= 0.95; A/A control static2 %.3f)"
      % (ratio("redis-hot"), ratio("redis-1"), ratio("static2")))
print("route cache misses per request: hot %.5f (target 0: no Redis round trip), cold %.3f; "
      "Redis LRANGE calls per request: hot %.5f, cold %.2f"
      % (med("hot", "redis-hot", "misses"), med("cold", "redis-cold", "misses"),
         med("hot", "redis-hot", "lranges"), med("cold", "redis-cold", "lranges")))
if len(sys.argv) > 2 and sys.argv[2].startswith("LOOKUP"):
    lk = dict(x.split("=") for x in sys.argv[2].split()[1:])
    st, sr = float(lk["static"]), float(lk["static_rand"])
    print("in process, ns per route_lookup() with the answer handled as the proxy does: static %s (names read at "
          "random: %s), redis-1 %s, hot set in order %s, at random %s; over static: redis-1 %+.0f ns, "
          "in order %+.0f ns, at random %+.0f ns"
          % (lk["static"], lk["static_rand"], lk["redis1"], lk["seq"], lk["rand"], float(lk["redis1"]) - st,
             float(lk["seq"]) - st, float(lk["rand"]) - sr))
if len(sys.argv) > 3 and sys.argv[3].strip():
    per = defaultdict(lambda: ([], []))
    for item in sys.argv[3].split():
        c, r, rp, mp = item.split(":")
        cpu = v[("hot", c, "cpu_us")].get(r)
        if cpu is not None:
            per[c][0].append(float(rp) / 100 * cpu)
            per[c][1].append(float(mp) / 100 * cpu)
    m = lambda c, i: statistics.median(per[c][i]) if per[c][i] else float("nan")
    print("perf, CPU per request in the routing code (route/cache/balance/host/match functions): redis-hot %.2f us, "
          "redis-1 %.2f us, static %.2f us (redis-hot - static %+.2f us); in the meter: redis-hot %.2f us, "
          "redis-1 %.2f us, static %.2f us"
          % (m("redis-hot", 0), m("redis-1", 0), m("static", 0), m("redis-hot", 0) - m("static", 0),
             m("redis-hot", 1), m("redis-1", 1), m("static", 1)))
EOF
echo "tollgate RSS: at start $rss_start KiB, after cold runs $rss_cold KiB, after hot runs $rss_hot KiB;" \
    "$cached entries cached (routes, tenants, unknown hosts): $(( (rss_hot - rss_start) * 1024 / (cached > 0 ? cached : 1) )) B of RSS per entry"
echo "change propagation over $CHANGES changes (HSET, nothing published): ${prop#PROPAGATION }"
if grep -q 'errors=[1-9]' "$RESULTS"; then echo "WARNING: some runs had errors: see the errors rows"; fi
