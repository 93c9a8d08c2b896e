# bench/lib.sh — shared helpers for tollgate's benchmark scripts (sourced, not run).
#
# Each bench script sources this file for: installing the Debian packages it
# needs, picking free loopback ports, starting nginx/tollgate in a private
# scratch directory, reading a process's CPU time and RSS from /proc, and
# cleaning every process it started on exit.  Only loopback addresses are used.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_DIR=$(cd "$BENCH_DIR/.." && pwd)
PY=/usr/bin/python3
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bench_need CMD:PACKAGE... — install PACKAGE with apt-get when CMD is missing.
bench_need() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]} with apt-get"
    if [ "$(id -u)" -ne 0 ]; then die "need root to apt-get install ${missing[*]}"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "apt-get install ${missing[*]} failed"
}

# Scratch directory, removed on exit with every process registered by bench_track.
WORK=$(mktemp -d /tmp/tg-bench.XXXXXX)
chmod 755 "$WORK"
BENCH_PIDS=()
bench_track() { BENCH_PIDS+=("$1"); }
bench_cleanup() {
    local p
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BENCH_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    [ -n "${KEEP_WORK:-}" ] && { log "kept $WORK"; return; }
    rm -rf "$WORK"
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# free_port — a TCP port on 127.0.0.1 that nothing listens on right now
# (never one handed out earlier by this script).
BENCH_PORTS_USED=" "
free_port() {
    local p
    while :; do
        p=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        case "$BENCH_PORTS_USED" in *" $p "*) continue ;; esac
        BENCH_PORTS_USED+="$p "
        echo "$p"; return
    done
}

# wait_port PORT [SECONDS] — until something accepts on 127.0.0.1:PORT.
wait_port() {
    local port=$1 t=${2:-10} i
    for i in $(seq $((t * 20))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# cpu_ticks_split PID — "utime stime" of the whole process (all threads), in clock ticks.
cpu_ticks_split() {
    # Fields after the ")" that ends comm: state is field 3, utime 14, stime 15.
    local stat rest
    stat=$(cat "/proc/$1/stat")
    rest=${stat##*) }
    set -- $rest
    echo "${12} ${13}"
}

# cpu_ticks PID — utime+stime of the whole process (all threads), in clock ticks.
cpu_ticks() {
    local u s
    read -r u s <<<"$(cpu_ticks_split "$1")"
    echo $((u + s))
}

# rss_kib PID — VmRSS in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# nginx_start NAME CONF_BODY — run nginx (master + workers) with the given
# config body (everything but the prologue) in $WORK/NAME; sets NGINX_MASTER
# and NGINX_WORKER (pid of the single worker).
nginx_start() {
    local name=$1 body=$2 dir=$WORK/$1
    mkdir -p "$dir/logs" "$dir/tmp"
    cat > "$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
$body
}
EOF
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>"$dir/logs/t.err" ||
        { cat "$dir/logs/t.err" >&2; die "nginx config $name invalid"; }
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2>>"$dir/logs/stderr" &
    NGINX_MASTER=$!
    bench_track "$NGINX_MASTER"
    local i
    NGINX_WORKER=
    for i in $(seq 100); do
        NGINX_WORKER=$(pgrep -P "$NGINX_MASTER" | head -1 || true)
        [ -n "$NGINX_WORKER" ] && break
        sleep 0.05
    done
    [ -n "$NGINX_WORKER" ] || die "nginx $name did not start (see $dir/logs)"
}

# tollgate_find — sets TOLLGATE to the binary: $BUILD/tollgate, else ./tollgate.
tollgate_find() {
    local b=${BUILD:-.}
    TOLLGATE=$(cd "$b" 2>/dev/null && pwd)/tollgate
    [ -x "$TOLLGATE" ] || die "no tollgate binary at $TOLLGATE: set BUILD=/path/to/build-tree"
}

# tollgate_start NAME ARGS... — run tollgate in the background; sets TG_PID.
# Its stderr goes to $WORK/NAME.log.
tollgate_start() {
    local name=$1; shift
    "$TOLLGATE" "$@" 2>"$WORK/$name.log" >/dev/null &
    TG_PID=$!
    bench_track "$TG_PID"
}

# median — of numbers on stdin, one per line.
# bench_rounds: ROUNDS rounds; in each, every scenario of $SCENARIOS and every
# contender of $CONTENDERS, the contenders' order rotated by one each round so
# that none always runs first.  Calls the script's run_wrk CONTENDER SCENARIO
# DURATION and appends "scenario contender round <run_wrk output>" to $RESULTS.
bench_rounds() {
    local -a cs
    read -r -a cs <<<"$CONTENDERS"
    local n=${#cs[@]} r s c i order line
    for r in $(seq "$ROUNDS"); do
        order=""
        for ((i = 0; i < n; i++)); do order+="${cs[$(((i + r - 1) % n))]} "; done
        for s in $SCENARIOS; do
            for c in $order; do
                line="$s $c $r $(run_wrk "$c" "$s" "$DURATION")"
                echo "$line" >> "$RESULTS"
                log "$line"
            done
        done
    done
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# wrk_report_lua — path of the Lua file whose done() prints one WRKSTAT line.
wrk_report_lua() { echo "$BENCH_DIR/wrk-report.lua"; }

# wrk_field LINE KEY — value of KEY=... in a WRKSTAT line.
wrk_field() { tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1==k {print $2}'; }

# bench_machine — one line describing this machine for reports.
bench_machine() {
    echo "$(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
}

# backend_start — the benchmark backend: nginx, one worker, serving from
# $WORK/www a 64-byte /small.txt, /100k.bin (100 KiB) and /1m.bin (1 MiB), plus
# any file the caller puts there.  Sets BACKEND_PORT and BACKEND_PID (worker).
# tcp_nopush is off on the backend (BACKEND_NOPUSH=on restores it): with it,
# nginx corks each sendfile response, and on loopback a client reading it in
# 8 KiB pieces (wrk) waits on the 40 ms delayed-ACK timer for ~0.5% of the
# responses -- wrk straight to this backend, no proxy, 100 KiB files: p99
# 42 ms with it, 0.5-0.8 ms without (docs/benchmarks.md, 2026-11-27).  Behind
# a proxy the backend holds its response's tail for the proxy's delayed ACK
# instead: often through tollgate (splicing), sometimes through nginx, and the
# 100 KiB p99 of the comparison measured the backend's cork, not the proxies.
backend_start() {
    mkdir -p "$WORK/www"
    head -c 64 /dev/zero | tr '\0' 'x' > "$WORK/www/small.txt"
    head -c $((100 * 1024)) /dev/urandom > "$WORK/www/100k.bin"
    head -c $((1024 * 1024)) /dev/urandom > "$WORK/www/1m.bin"
    chmod 644 "$WORK"/www/*
    BACKEND_PORT=$(free_port)
    nginx_start backend "
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        keepalive_requests 10000000;
        keepalive_timeout 75s;
        tcp_nopush ${BACKEND_NOPUSH:-off};
        root $WORK/www;
    }"
    BACKEND_PID=$NGINX_WORKER
    wait_port "$BACKEND_PORT" || die "backend nginx did not listen"
}

# nginx_proxy_start — the reference: nginx as a reverse proxy to the backend,
# one worker, upstream keepalive 64, HTTP/1.1 upstream with Connection "",
# and for the large bodies (everything but /small.txt) proxy_buffer_size 64k
# and proxy_buffers 16 64k (with its defaults nginx spends ~3x the CPU on them).
# The headers tollgate adds (X-Forwarded-*, Forwarded; Host kept) are set too so
# that both proxies do the same work (NGINX_FWD_HEADERS=0 turns that off).
# keepalive_requests is raised on both sides so that nginx does not pay for
# periodic reconnects (tollgate has no such limit).
# NGINX_ACCESS_LOG=FILE: log "\$request_time \$upstream_header_time" per request.
# Sets NGINX_PORT and NGINX_WORKER.
nginx_proxy_start() {
    NGINX_PORT=$(free_port)
    local common='
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";'
    if [ "${NGINX_FWD_HEADERS:-1}" = 1 ]; then
        common+='
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=$host";'
    fi
    local fmt= log=
    if [ -n "${NGINX_ACCESS_LOG:-}" ]; then
        fmt="log_format split '\$request_time \$upstream_header_time';"
        log="access_log $NGINX_ACCESS_LOG split buffer=256k;"
    fi
    nginx_start proxy "
    $fmt
    upstream be {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        $log
        keepalive_requests 10000000;
        keepalive_timeout 75s;
        location = /small.txt { $common }
        location / {
            $common
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
        }
    }"
    wait_port "$NGINX_PORT" || die "nginx proxy did not listen"
}

# raise_nofile [N] — raise the soft open-files limit to N (default 65536), or to
# the hard limit when that is lower.
raise_nofile() {
    local want=${1:-65536} hard
    hard=$(ulimit -Hn)
    [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ] && want=$hard
    ulimit -n "$want"
}
