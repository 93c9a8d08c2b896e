#!/bin/bash
# bench/meter-bench.sh — what metering and cap enforcement cost, in one run.
#
# Debian packages (installed with apt-get when missing): nginx-light (or nginx), wrk, curl,
# redis-server, python3
#
# Starts on loopback: a backend (nginx, one worker, static files), one Redis,
# and three tollgate processes (--workers 1 each) proxying to the backend:
#   off       static route, no --redis: counting in memory only, nothing to
#             flush, no cap (the closest the binary gets to "metering off")
#   uncapped  Redis routing, tenant without a cap: counting + a flush per second
#   on        Redis routing, tenant with a 1 PB cap: counting, flushes, budget
#             leases and a reservation (atomic CAS) before every body chunk
# wrk runs against them interleaved (the order rotates every round) for each
# scenario; the script prints the medians and each contender's ratio to "off",
# and a last line "metering cost: X% (target < 3%)" from the CPU per request
# of "on" vs "off" in the 100k scenario (requests/s on a 2-core machine shared
# by wrk, backend and proxy are noisier than CPU time per request).
#
# Environment:
#   BUILD=DIR  build tree holding ./tollgate (default: current directory)
#   ROUNDS=3  DURATION=3  WARMUP=1  SCENARIOS="small 100k"  CONNS=32
# Quick smoke run: ROUNDS=1 DURATION=1 WARMUP=0 bench/meter-bench.sh

source "$(dirname "$0")/lib.sh"
bench_need nginx:nginx-light wrk:wrk curl:curl redis-server:redis-server

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"small 100k"}
CONNS=${CONNS:-32}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

scen_path() { case $1 in small) echo /small.txt ;; 100k) echo /100k.bin ;; 1m) echo /1m.bin ;; esac; }

backend_start
tollgate_find

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
bench_track $!
wait_port "$REDIS_PORT" || die "redis-server did not listen"
rcli() { redis-cli -p "$REDIS_PORT" "$@" >/dev/null; }
rcli HSET tg:domain:on.bench tenant capped backends "127.0.0.1:$BACKEND_PORT"
rcli HSET tg:tenant:capped cap_bytes 1000000000000000 cap_action block
rcli HSET tg:domain:uncapped.bench tenant uncapped backends "127.0.0.1:$BACKEND_PORT"

declare -A PORT PID HOSTOF
start_one() {
    local name=$1; shift
    PORT[$name]=$(free_port)
    tollgate_start "$name" --workers 1 --listen "127.0.0.1:${PORT[$name]}" --admin-listen off "$@"
    PID[$name]=$TG_PID
    wait_port "${PORT[$name]}" 10 || { cat "$WORK/$name.log" >&2; die "tollgate $name did not listen"; }
}
start_one off --route "off.bench=127.0.0.1:$BACKEND_PORT"
start_one uncapped --redis "redis://127.0.0.1:$REDIS_PORT"
start_one on --redis "redis://127.0.0.1:$REDIS_PORT"
HOSTOF[off]=off.bench
HOSTOF[uncapped]=uncapped.bench
HOSTOF[on]=on.bench
CONTENDERS="off uncapped on"

for c in $CONTENDERS; do
    for f in small.txt 100k.bin; do
        curl -sf -o "$WORK/got" -H "Host: ${HOSTOF[$c]}" "http://127.0.0.1:${PORT[$c]}/$f" ||
            die "$c: GET /$f failed (see $WORK/$c.log)"
        cmp -s "$WORK/got" "$WORK/www/$f" || die "$c: GET /$f returned a different body"
    done
done
log "bodies verified through: $CONTENDERS"

run_wrk() {
    local c=$1 s=$2 d=$3 out stat t0 t1
    t0=$(cpu_ticks "${PID[$c]}")
    out=$(wrk -t1 -c"$CONNS" -d"${d}s" --latency -s "$(wrk_report_lua)" \
        -H "Host: ${HOSTOF[$c]}" "http://127.0.0.1:${PORT[$c]}$(scen_path "$s")" 2>&1) ||
        { echo "$out" >&2; die "wrk failed against $c"; }
    t1=$(cpu_ticks "${PID[$c]}")
    kill -0 "${PID[$c]}" 2>/dev/null || die "$c died during $s"
    stat=$(grep '^WRKSTAT' <<<"$out") || { echo "$out" >&2; die "no WRKSTAT from wrk"; }
    $PY - "$stat" "$t0" "$t1" "$CLK_TCK" <<'EOF'
import sys
kv = dict(x.split("=") for x in sys.argv[1].split()[1:])
t0, t1, hz = (int(x) for x in sys.argv[2:5])
n = int(kv["requests"]) or 1
dur = int(kv["duration_us"]) / 1e6
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
print("rps=%.1f p99_ms=%.3f cpu_us=%.3f errors=%d" % (n / dur, int(kv["p99_us"]) / 1e3,
      (t1 - t0) / hz * 1e6 / n, errs))
EOF
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
log "$(bench_machine)"
if [ "$WARMUP" != 0 ]; then
    for s in $SCENARIOS; do for c in $CONTENDERS; do run_wrk "$c" "$s" "$WARMUP" >/dev/null; done; done
fi
bench_rounds

# the counters really moved: Redis holds the "on" tenant's bytes
used=$(redis-cli -p "$REDIS_PORT" HGET "tg:meter:capped:$(date -u +%Y%m)" bytes_out)
log "Redis: tenant capped bytes_out=$used"
[ "${used:-0}" -gt 0 ] || die "no counts reached Redis"

echo
echo "# metering cost, HTTP/1.1, 1 worker each — $(bench_machine)"
$PY - "$RESULTS" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
order = []
for line in open(sys.argv[1]):
    f = line.split()
    s, c = f[0], f[1]
    kv = {k: float(v) for k, v in (x.split("=") for x in f[3:])}
    runs[(s, c)].append(kv)
    if (s, c) not in order:
        order.append((s, c))
scen = []
for s, _ in order:
    if s not in scen:
        scen.append(s)
cost = None
for s in scen:
    print("%-6s %-9s %12s %10s %12s %7s   %s" % ("scen", "contender", "requests/s", "p99 ms", "CPU us/req", "errors",
                                                 "vs off (rps, cpu)"))
    base = {k: statistics.median(r[k] for r in runs[(s, "off")]) for k in ("rps", "cpu_us")}
    for c in ("off", "uncapped", "on"):
        m = {k: statistics.median(r[k] for r in runs[(s, c)]) for k in ("rps", "p99_ms", "cpu_us")}
        errs = sum(r["errors"] for r in runs[(s, c)])
        print("%-6s %-9s %12.0f %10.3f %12.2f %7d   %.3f, %.3f" % (s, c, m["rps"], m["p99_ms"], m["cpu_us"], errs,
                                                                m["rps"] / base["rps"], m["cpu_us"] / base["cpu_us"]))
        if s == "100k" and c == "on":
            cost = (m["cpu_us"] / base["cpu_us"] - 1) * 100
    print()
if cost is not None:
    print("metering cost: %+.1f%% CPU per request, on vs off, 100k bodies (target < 3%%)" % cost)
EOF
