#!/usr/bin/env bash
# bench/latency-split.sh — where a request's time goes, tollgate beside nginx.
#
# Runs the same loads as bench/http1-vs-nginx.sh (nginx backend, one worker;
# tollgate and an nginx reverse proxy, one worker each), interleaved over
# rounds, with both proxies writing an access log, and splits each request's
# time at the proxy into:
#   upstream  the backend's time to its response head, as the proxy saw it
#             (tollgate's upstream_seconds, nginx's $upstream_header_time)
#   proxy     the rest: the proxy's own time for the request, from the first
#             byte of its head to the end of the response (total - upstream)
#   total     the proxy's whole duration (tollgate's seconds, nginx's
#             $request_time)
# and beside them what the client (wrk) measured end to end.  It prints
# percentiles of each, per proxy, over all rounds.  The time a request spends
# outside the proxy (wrk's p99 minus the proxy's) is queueing in the kernel
# and in the scheduler on a shared machine.
#
# nginx logs milliseconds, tollgate microseconds (both from precise clocks);
# the access logs cost each proxy a little CPU, so the figures of
# bench/http1-vs-nginx.sh stay the reference for throughput.
#
# Debian packages: nginx-light (or nginx), wrk, curl, python3, procps.
# Environment: BUILD (tollgate's build dir), SCENARIO=100k (small|100k|1m),
#   CONNS (default: the scenario's), ROUNDS=4, DURATION=5, PIN=0 (1: proxies on
#   CPU 1, wrk and backend on CPU 0).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_need pgrep:procps /usr/bin/python3:python3 nginx:nginx-light wrk:wrk curl:curl
raise_nofile

SCENARIO=${SCENARIO:-100k}
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-5}
case $SCENARIO in
    small) PATH_=/small.txt; CONNS=${CONNS:-64} ;;
    100k) PATH_=/100k.bin; CONNS=${CONNS:-16} ;;
    1m) PATH_=/1m.bin; CONNS=${CONNS:-8} ;;
    *) die "SCENARIO must be small, 100k or 1m" ;;
esac
HOST=bench.local

backend_start
NGINX_ACCESS_LOG=$WORK/nginx-split.log nginx_proxy_start
tollgate_find
TG_PORT=$(free_port)
tollgate_start tollgate --workers 1 --listen "127.0.0.1:$TG_PORT" --admin-listen off \
    --route "$HOST=127.0.0.1:$BACKEND_PORT" --access-log "$WORK/tollgate-split.log"
wait_port "$TG_PORT" 10 || { cat "$WORK/tollgate.log" >&2; die "tollgate did not listen on $TG_PORT"; }

WRK_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    taskset -a -p -c 0 "$BACKEND_PID" >/dev/null
    taskset -a -p -c 1 "$NGINX_WORKER" >/dev/null
    taskset -a -p -c 1 "$TG_PID" >/dev/null
    WRK_PREFIX=(taskset -c 0)
fi

log "$(bench_machine)"
log "scenario $SCENARIO ($CONNS connections), $ROUNDS rounds x ${DURATION}s per proxy"
: > "$WORK/wrk.txt"
for r in $(seq "$ROUNDS"); do
    for c in tollgate nginx; do
        port=$TG_PORT
        [ "$c" = nginx ] && port=$NGINX_PORT
        out=$("${WRK_PREFIX[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$(wrk_report_lua)" \
            -H "Host: $HOST" "http://127.0.0.1:$port$PATH_" 2>&1) || { echo "$out" >&2; die "wrk failed"; }
        stat=$(grep '^WRKSTAT' <<<"$out")
        echo "$c $stat" >> "$WORK/wrk.txt"
        log "round $r $c: $(wrk_field "$stat" requests) requests, p99 $(wrk_field "$stat" p99_us) us"
    done
done
kill -USR1 "$NGINX_MASTER" 2>/dev/null || true   # reopen: flushes nginx's log buffer
sleep 1

$PY - "$WORK/tollgate-split.log" "$WORK/nginx-split.log" "$WORK/wrk.txt" <<'EOF'
import sys

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] if xs else float("nan")

def rows(name, total, upstream, wrk_p99):
    proxy = [t - u for t, u in zip(total, upstream)]
    print("%-9s %8d requests" % (name, len(total)))
    for label, xs in (("upstream", upstream), ("proxy", proxy), ("total", total)):
        print("  %-9s " % label + "  ".join("p%s %7.2f" % (p, pct(xs, p)) for p in (50, 90, 99, 99.9)))
    print("  %-9s p99 %7.2f (median of the rounds' p99)" % ("client", wrk_p99))

tg_total, tg_up = [], []
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 12 and f[11] != "-":
        tg_total.append(float(f[9]) * 1000)
        tg_up.append(float(f[11]) * 1000)
ng_total, ng_up = [], []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) == 2 and f[1] != "-":
        ng_total.append(float(f[0]) * 1000)
        ng_up.append(float(f[1].split(",")[-1]) * 1000)
p99 = {"tollgate": [], "nginx": []}
for line in open(sys.argv[3]):
    f = line.split()
    kv = dict(x.split("=") for x in f[2:])
    p99[f[0]].append(int(kv["p99_us"]) / 1000)
med = lambda xs: sorted(xs)[len(xs) // 2] if xs else float("nan")
print("\n# where the time goes (ms; nginx logs whole milliseconds)")
rows("tollgate", tg_total, tg_up, med(p99["tollgate"]))
rows("nginx", ng_total, ng_up, med(p99["nginx"]))
EOF
