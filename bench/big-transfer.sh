#!/bin/bash
# bench/big-transfer.sh — 1 GiB downloads and uploads through tollgate; its RSS must stay flat.
#
# Debian packages (installed with apt-get when missing): nginx-light (or nginx), curl, python3, procps
#
# Backends on loopback: nginx (one worker) serving a sparse SIZE_MB file for the
# downloads, and bench/upload_sink.py, which reads every request body (by
# Content-Length or chunked), discards it and answers with the byte count — the
# script checks that count, so a proxy that drops bytes fails.  A second sink
# reads at SLOW_RATE to test backpressure on uploads; the slow download is a
# curl client limited to SLOW_RATE.  For each transfer, tollgate's VmRSS is
# sampled every 0.5 s; the script prints time, throughput, RSS at the start,
# the maximum, and the growth.  Target (issue 2): flat RSS (the proxy holds a
# bounded amount, ~256 KiB, per connection, whatever the body size or the
# speed of either side).
#
# Transfers: download (fast client), download (slow client), upload with
# Content-Length (curl -T file), upload chunked (curl -T - from a pipe), upload
# to a slow backend.
#
# Environment: BUILD=DIR (build tree with ./tollgate), SIZE_MB=1024,
#   SLOW_MB=512, SLOW_RATE=100M (bytes/s, curl syntax), FLAT_KIB=4096 (growth
#   allowed to call it flat), SUBJECT=tollgate|nginx (nginx: measure the
#   reference nginx proxy instead, proxy_buffering and request buffering off),
#   TG_ARGS="..." (extra tollgate arguments)
# Quick run: SIZE_MB=128 SLOW_MB=64 bench/big-transfer.sh

source "$(dirname "$0")/lib.sh"
bench_need pgrep:procps /usr/bin/python3:python3 nginx:nginx-light curl:curl

SIZE_MB=${SIZE_MB:-1024}
SLOW_MB=${SLOW_MB:-512}
SLOW_RATE=${SLOW_RATE:-100M}
FLAT_KIB=${FLAT_KIB:-4096}
SUBJECT=${SUBJECT:-tollgate}
raise_nofile

rate_bytes() {   # curl-style 100M / 512K / 1G -> bytes
    awk -v r="$1" 'BEGIN { m = 1; u = toupper(substr(r, length(r)));
        if (u == "K") m = 1024; else if (u == "M") m = 1048576; else if (u == "G") m = 1073741824;
        if (m > 1) r = substr(r, 1, length(r) - 1); printf "%d\n", r * m }'
}

# ---- backends ----
backend_start
truncate -s "${SIZE_MB}M" "$WORK/www/big.bin"
truncate -s "${SLOW_MB}M" "$WORK/www/slow.bin"
chmod 644 "$WORK/www/big.bin" "$WORK/www/slow.bin"

start_sink() {   # start_sink NAME [ARGS] — sets SINK_PORT
    $PY "$BENCH_DIR/upload_sink.py" 0 "${@:2}" > "$WORK/$1.out" 2>&1 &
    bench_track $!
    for _ in $(seq 100); do grep -q '^PORT' "$WORK/$1.out" 2>/dev/null && break; sleep 0.05; done
    SINK_PORT=$(awk '/^PORT/ {print $2}' "$WORK/$1.out")
    [ -n "$SINK_PORT" ] || die "upload sink $1 did not start"
}
start_sink sink;      FAST_SINK=$SINK_PORT
start_sink slowsink --rate "$(rate_bytes "$SLOW_RATE")"; SLOW_SINK=$SINK_PORT

# ---- the proxy under test: Host dl.bench -> nginx, ul.bench -> sink, slowul.bench -> slow sink ----
PORT=$(free_port)
if [ "$SUBJECT" = nginx ]; then
    srv() {   # srv HOST UPSTREAM_PORT
        echo "server { listen 127.0.0.1:$PORT; server_name $1; client_max_body_size 0;
            location / { proxy_pass http://127.0.0.1:$2; proxy_http_version 1.1;
                proxy_set_header Connection \"\"; proxy_buffering off; proxy_request_buffering off;
                proxy_buffer_size 64k; proxy_buffers 16 64k; } }"
    }
    nginx_start subject "$(srv dl.bench "$BACKEND_PORT") $(srv ul.bench "$FAST_SINK") $(srv slowul.bench "$SLOW_SINK")"
    PID=$NGINX_WORKER
else
    tollgate_find
    # shellcheck disable=SC2086
    tollgate_start tollgate --workers 1 --listen "127.0.0.1:$PORT" --admin-listen off \
        --route "dl.bench=127.0.0.1:$BACKEND_PORT" --route "ul.bench=127.0.0.1:$FAST_SINK" \
        --route "slowul.bench=127.0.0.1:$SLOW_SINK" ${TG_ARGS:-}
    PID=$TG_PID
fi
wait_port "$PORT" 10 || { cat "$WORK"/*.log >&2 2>/dev/null; die "$SUBJECT did not listen on $PORT"; }
URL=http://127.0.0.1:$PORT

# transfer NAME EXPECTED_BYTES CURL_ARGS... — one measured transfer; prints a table row.
transfer() {
    local name=$1 want=$2; shift 2
    local rss0 sampler out code size secs max got ok
    curl -s -m 10 -o /dev/null -H 'Host: dl.bench' "$URL/small.txt"   # settle: pools warmed
    sleep 0.5
    rss0=$(rss_kib "$PID")
    ( while kill -0 "$PID" 2>/dev/null; do rss_kib "$PID"; sleep 0.5; done ) > "$WORK/rss.$name" 2>/dev/null &
    sampler=$!
    local dst=$WORK/body
    case $name in download*) dst=/dev/null ;; esac   # never write the big body to disk
    rm -f "$WORK/body"
    out=$(curl -s -m 900 -o "$dst" -w '%{http_code} %{size_download} %{size_upload} %{time_total}' "$@") || true
    sleep 0.5
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    kill -0 "$PID" 2>/dev/null || die "$SUBJECT died during $name"
    read -r code size_dl size_ul secs <<<"$out"
    max=$(sort -n "$WORK/rss.$name" | tail -1)
    case $name in
        download*) got=$size_dl ;;
        *) got=$(awk '/^received/ {print $2}' "$WORK/body" 2>/dev/null) ;;
    esac
    ok=ok
    [ "$code" = 200 ] && [ "${got:-0}" = "$want" ] || ok="FAILED(status ${code:-?}, ${got:-0} of $want bytes)"
    [ "$ok" = ok ] && [ $((max - rss0)) -gt "$FLAT_KIB" ] && ok="NOT FLAT"
    printf '%-20s %8d %8.2f %9.1f %10d %10d %10d  %s\n' "$name" $((want / 1048576)) "$secs" \
        "$(awk -v b="$want" -v s="$secs" 'BEGIN {print (s > 0 ? b / 1048576 / s : 0)}')" \
        "$rss0" "$max" $((max - rss0)) "$ok"
}

SIZE=$((SIZE_MB * 1048576)); SLOW=$((SLOW_MB * 1048576))
echo "# big transfers through $SUBJECT, RSS sampled every 0.5 s — $(bench_machine)"
printf '%-20s %8s %8s %9s %10s %10s %10s  %s\n' transfer MiB seconds "MiB/s" "RSS0 KiB" "max KiB" "growth" verdict
transfer download "$SIZE" -H 'Host: dl.bench' "$URL/big.bin"
transfer download-slow-client "$SLOW" --limit-rate "$SLOW_RATE" -H 'Host: dl.bench' "$URL/slow.bin"
transfer upload-length "$SIZE" -T "$WORK/www/big.bin" -H 'Host: ul.bench' "$URL/upload"
transfer upload-chunked "$SIZE" -T - -H 'Host: ul.bench' "$URL/upload" < <(head -c "$SIZE" /dev/zero)
transfer upload-slow-backend "$SLOW" -T "$WORK/www/slow.bin" -H 'Host: slowul.bench' "$URL/upload"
echo "(growth = max sampled VmRSS - VmRSS before the transfer; flat = growth <= $FLAT_KIB KiB)"
