#!/bin/bash
# bench/idle-conns.sh — RSS per idle keep-alive client connection, tollgate vs nginx.
#
# Debian packages (installed with apt-get when missing): nginx-light (or nginx), curl, python3, procps
#
# Starts the bench backend (nginx), tollgate (--workers 1, static route) and an
# nginx reverse proxy (one worker), then for each proxy in turn: a few warm-up
# requests, VmRSS read (baseline), CONNS client connections opened by
# bench/idle_client.py — each sends one request, reads the whole response and
# stays open and idle — VmRSS read again after SETTLE seconds; reports
# (VmRSS delta) / CONNS.  Also shows the RSS once the connections are closed.
# For nginx the figure is its (single) worker process; for tollgate the whole
# process.  Target (issue 2): <= 1 KiB per idle connection.
#
# Environment: BUILD=DIR (build tree with ./tollgate), CONNS=5000, SETTLE=1,
#   NGINX_ONLY=1 (nginx alone), TG_ARGS="..." (extra tollgate arguments)

source "$(dirname "$0")/lib.sh"
bench_need pgrep:procps /usr/bin/python3:python3 nginx:nginx-light curl:curl

CONNS=${CONNS:-5000}
SETTLE=${SETTLE:-1}
NGINX_ONLY=${NGINX_ONLY:-0}
HOST=bench.local
ulimit -n $((CONNS * 2 + 1000)) 2>/dev/null || die "cannot raise ulimit -n to $((CONNS * 2 + 1000))"

backend_start
nginx_proxy_start
NGINX_PID=$NGINX_WORKER
CONTENDERS="tollgate nginx"
if [ "$NGINX_ONLY" = 1 ]; then
    CONTENDERS=nginx
else
    tollgate_find
    TG_PORT=$(free_port)
    # shellcheck disable=SC2086
    tollgate_start tollgate --workers 1 --listen "127.0.0.1:$TG_PORT" --admin-listen off \
        --route "$HOST=127.0.0.1:$BACKEND_PORT" ${TG_ARGS:-}
    wait_port "$TG_PORT" 10 || { cat "$WORK/tollgate.log" >&2; die "tollgate did not listen"; }
fi
port_of() { case $1 in tollgate) echo "$TG_PORT" ;; nginx) echo "$NGINX_PORT" ;; esac; }
pid_of() { case $1 in tollgate) echo "$TG_PID" ;; nginx) echo "$NGINX_PID" ;; esac; }

echo "# RSS per idle keep-alive client connection ($CONNS connections) — $(bench_machine)"
printf '%-10s %12s %12s %12s %14s %16s\n' proxy "base KiB" "idle KiB" "delta KiB" "per conn B" "after close KiB"
for c in $CONTENDERS; do
    port=$(port_of "$c"); pid=$(pid_of "$c")
    for _ in 1 2 3 4 5; do
        curl -sf -m 10 -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$port/small.txt" || die "$c: warm-up request failed"
    done
    # A short burst of idle connections first, so that one-off start-up
    # allocations (first-use pools, lazily built tables) are not counted.
    $PY "$BENCH_DIR/idle_client.py" "$port" 50 --host "$HOST" < /dev/null > /dev/null ||
        die "$c: warm-up connections failed"
    sleep "$SETTLE"
    base=$(rss_kib "$pid")

    rm -f "$WORK/hold" "$WORK/client.out"
    mkfifo "$WORK/hold"
    $PY "$BENCH_DIR/idle_client.py" "$port" "$CONNS" --host "$HOST" < "$WORK/hold" > "$WORK/client.out" &
    client=$!
    bench_track "$client"
    exec 7> "$WORK/hold"
    for _ in $(seq 1200); do
        grep -q READY "$WORK/client.out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || die "$c: idle client failed"
        sleep 0.1
    done
    grep -q READY "$WORK/client.out" || die "$c: $CONNS connections not ready in 120 s"
    sleep "$SETTLE"
    kill -0 "$pid" 2>/dev/null || die "$c died"
    idle=$(rss_kib "$pid")
    exec 7>&-
    wait "$client" || die "$c: idle client exited with an error"
    sleep "$SETTLE"
    after=$(rss_kib "$pid")
    printf '%-10s %12d %12d %12d %14.0f %16d\n' "$c" "$base" "$idle" $((idle - base)) \
        "$(awk -v a="$idle" -v b="$base" -v n="$CONNS" 'BEGIN {print (a - b) * 1024 / n}')" "$after"
done
echo "(per conn = VmRSS delta / $CONNS; target <= 1024 B; kernel socket buffers are not in RSS)"
