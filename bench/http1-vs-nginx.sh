#!/bin/bash
# bench/http1-vs-nginx.sh — tollgate vs an nginx reverse proxy, HTTP/1.1, one worker each.
#
# Debian packages (installed with apt-get when missing): nginx-light (or nginx), wrk, curl, python3, procps;
#   haproxy with HAPROXY=1
#
# Starts on loopback: a backend (nginx, one worker, serving a small body, a
# 100 KiB body and a 1 MiB body from files), tollgate (--workers 1, static
# route) and an nginx reverse proxy (one worker, upstream keepalive 64).  Runs
# wrk against both proxies in one run, interleaved: each round runs every
# scenario against both, the order of the two alternating from round to round.
# Prints, per scenario, the medians over rounds and the tollgate/nginx ratios of
# requests/s, p99 latency, and the proxy process's CPU time per request
# (utime+stime of the whole process from /proc/PID/stat before and after each
# run, divided by the requests wrk completed) — the fair figure on a 2-core
# machine where client, proxy and backend share the cores — and its two parts,
# user space (the proxy's own code and libraries) and kernel (system calls, TCP).
#
# Environment:
#   BUILD=DIR        build tree holding ./tollgate (default: current directory)
#   ROUNDS=5         rounds per scenario        DURATION=5   seconds per wrk run
#   WARMUP=1         seconds of warm-up per scenario and proxy (0 = none)
#   SCENARIOS="small 100k 1m close"             WRK_THREADS=1
#   CONNS_SMALL=64 CONNS_100K=16 CONNS_1M=8 CONNS_CLOSE=16   wrk connections
#   NGINX_ONLY=1     measure the nginx side alone (while tollgate cannot proxy)
#   NGINX_FWD_HEADERS=0  nginx does not add X-Forwarded-*/Forwarded (tollgate always does)
#   TG_ARGS="..."    extra tollgate arguments   RESULTS=FILE  keep the raw lines
#   TOLLGATE_B=BIN   also measure another tollgate binary (an A/B of two builds in one run)
#   HAPROXY=1        also measure haproxy (nbthread 1, http-reuse always, option forwardfor)
#   BACKEND_NOPUSH=on  the backend corks its responses (tcp_nopush; off by default: see lib.sh)
#   PIN=1            pin each proxy to CPU 1 and wrk + backend to CPU 0 (taskset):
#                    less scheduler noise in requests/s and latency; CPU/request unchanged
# Quick smoke run (< 1 min): ROUNDS=2 DURATION=1 WARMUP=0 bench/http1-vs-nginx.sh

source "$(dirname "$0")/lib.sh"
bench_need pgrep:procps /usr/bin/python3:python3 nginx:nginx-light wrk:wrk curl:curl

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-"small 100k 1m close"}
WRK_THREADS=${WRK_THREADS:-1}
NGINX_ONLY=${NGINX_ONLY:-0}
HOST=bench.local
raise_nofile

# ---- scenarios: path, connections, extra wrk arguments ----
scen_path() { case $1 in small|close) echo /small.txt ;; 100k) echo /100k.bin ;; 1m) echo /1m.bin ;; esac; }
scen_conns() {
    case $1 in small) echo "${CONNS_SMALL:-64}" ;; 100k) echo "${CONNS_100K:-16}" ;;
               1m) echo "${CONNS_1M:-8}" ;; close) echo "${CONNS_CLOSE:-16}" ;; esac
}

# ---- backend (nginx, one worker, static files) and nginx reverse proxy ----
backend_start
nginx_proxy_start
NGINX_PID=$NGINX_WORKER

# ---- tollgate ----
CONTENDERS="tollgate nginx"
if [ "$NGINX_ONLY" = 1 ]; then
    CONTENDERS=nginx
    log "NGINX_ONLY=1: tollgate not measured"
else
    tollgate_find
    TG_PORT=$(free_port)
    # shellcheck disable=SC2086
    tollgate_start tollgate --workers 1 --listen "127.0.0.1:$TG_PORT" --admin-listen off \
        --route "$HOST=127.0.0.1:$BACKEND_PORT" ${TG_ARGS:-}
    wait_port "$TG_PORT" 10 || { cat "$WORK/tollgate.log" >&2; die "tollgate did not listen on $TG_PORT"; }
fi

# ---- optional: a second tollgate build (TOLLGATE_B=/path/to/tollgate), A/B in one run ----
if [ -n "${TOLLGATE_B:-}" ]; then
    [ -x "$TOLLGATE_B" ] || die "TOLLGATE_B=$TOLLGATE_B is not an executable"
    TB_PORT=$(free_port)
    # shellcheck disable=SC2086
    "$TOLLGATE_B" --workers 1 --listen "127.0.0.1:$TB_PORT" --admin-listen off \
        --route "$HOST=127.0.0.1:$BACKEND_PORT" ${TG_ARGS:-} 2>"$WORK/tollgate_b.log" >/dev/null &
    TB_PID=$!
    bench_track "$TB_PID"
    wait_port "$TB_PORT" 10 || { cat "$WORK/tollgate_b.log" >&2; die "TOLLGATE_B did not listen"; }
    CONTENDERS="${CONTENDERS/tollgate/tollgate tollgate_b}"
fi

# ---- optional third contender: haproxy (HAPROXY=1), one thread, connection reuse ----
if [ "${HAPROXY:-0}" = 1 ]; then
    bench_need haproxy:haproxy
    HA_PORT=$(free_port)
    cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 300s
    timeout http-keep-alive 75s
    option forwardfor
    http-reuse always
frontend f
    bind 127.0.0.1:$HA_PORT
    default_backend b
backend b
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
    HA_PID=$!
    bench_track "$HA_PID"
    wait_port "$HA_PORT" || { cat "$WORK/haproxy.log" >&2; die "haproxy did not listen"; }
    CONTENDERS="${CONTENDERS/nginx/haproxy nginx}"
fi

WRK_PREFIX=()
if [ "${PIN:-0}" = 1 ]; then
    taskset -a -p -c 0 "$BACKEND_PID" >/dev/null
    taskset -a -p -c 1 "$NGINX_PID" >/dev/null
    [ -n "${TG_PID:-}" ] && taskset -a -p -c 1 "$TG_PID" >/dev/null
    [ -n "${HA_PID:-}" ] && taskset -a -p -c 1 "$HA_PID" >/dev/null
    [ -n "${TB_PID:-}" ] && taskset -a -p -c 1 "$TB_PID" >/dev/null
    WRK_PREFIX=(taskset -c 0)
    log "PIN=1: backend and wrk on CPU 0, proxies on CPU 1"
fi

port_of() {
    case $1 in tollgate) echo "$TG_PORT" ;; tollgate_b) echo "$TB_PORT" ;; nginx) echo "$NGINX_PORT" ;;
               haproxy) echo "$HA_PORT" ;; esac
}
pid_of() {
    case $1 in tollgate) echo "$TG_PID" ;; tollgate_b) echo "$TB_PID" ;; nginx) echo "$NGINX_PID" ;;
               haproxy) echo "$HA_PID" ;; esac
}

# ---- correctness first: every body must come back whole through each proxy ----
for c in $CONTENDERS; do
    for f in small.txt 100k.bin 1m.bin; do
        curl -sf -m 10 -o "$WORK/got" -H "Host: $HOST" "http://127.0.0.1:$(port_of "$c")/$f" ||
            die "$c: GET /$f failed"
        cmp -s "$WORK/got" "$WORK/www/$f" || die "$c: GET /$f returned a different body"
    done
done
log "bodies verified through: $CONTENDERS"

# run_wrk CONTENDER SCENARIO SECONDS — one wrk run; prints a result line.
run_wrk() {
    local c=$1 s=$2 d=$3 port pid extra=() out stat t0 t1 b0 b1
    port=$(port_of "$c"); pid=$(pid_of "$c")
    [ "$s" = close ] && extra=(-H "Connection: close")
    t0=$(cpu_ticks_split "$pid"); b0=$(cpu_ticks "$BACKEND_PID")
    out=$("${WRK_PREFIX[@]}" wrk -t"$WRK_THREADS" -c"$(scen_conns "$s")" -d"${d}s" --latency -s "$(wrk_report_lua)" \
        -H "Host: $HOST" "${extra[@]}" "http://127.0.0.1:$port$(scen_path "$s")" 2>&1) ||
        { echo "$out" >&2; die "wrk failed against $c"; }
    t1=$(cpu_ticks_split "$pid"); b1=$(cpu_ticks "$BACKEND_PID")
    kill -0 "$pid" 2>/dev/null || die "$c died during $s"
    stat=$(grep '^WRKSTAT' <<<"$out") || { echo "$out" >&2; die "no WRKSTAT from wrk"; }
    # shellcheck disable=SC2086
    $PY - "$stat" $t0 $t1 "$b0" "$b1" "$CLK_TCK" <<'EOF'
import sys
kv = dict(x.split("=") for x in sys.argv[1].split()[1:])
u0, s0, u1, s1, b0, b1, hz = (int(x) for x in sys.argv[2:9])
n = int(kv["requests"]) or 1
dur = int(kv["duration_us"]) / 1e6
errs = sum(int(kv[k]) for k in kv if k.startswith("err_"))
per = lambda ticks: ticks / hz * 1e6 / n
print("rps=%.1f p50_ms=%.3f p99_ms=%.3f cpu_us=%.3f user_us=%.3f sys_us=%.3f backend_cpu_us=%.3f errors=%d requests=%d"
      % (n / dur, int(kv["p50_us"]) / 1e3, int(kv["p99_us"]) / 1e3,
         per(u1 + s1 - u0 - s0), per(u1 - u0), per(s1 - s0), per(b1 - b0), errs, n))
EOF
}

RESULTS=${RESULTS:-$WORK/results.txt}
: > "$RESULTS"
log "$(bench_machine)"
log "scenarios: $SCENARIOS; $ROUNDS rounds x ${DURATION}s per scenario and proxy"

if [ "$WARMUP" != 0 ]; then
    for s in $SCENARIOS; do for c in $CONTENDERS; do run_wrk "$c" "$s" "$WARMUP" >/dev/null; done; done
fi
bench_rounds

echo
echo "# tollgate vs nginx reverse proxy, HTTP/1.1, 1 worker each — $(bench_machine)"
$PY "$BENCH_DIR/report.py" "$RESULTS" --keys rps,p99_ms,cpu_us,user_us,sys_us,backend_cpu_us,errors --base nginx
if grep -q 'errors=[1-9]' "$RESULTS"; then
    echo "WARNING: some runs had errors (socket errors or non-2xx/3xx): see the errors row"
fi
