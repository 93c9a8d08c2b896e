#!/bin/bash
# demo.sh: builds tollgate and runs it in front of a demo backend on this
# machine, with a static route for "localhost" (no Redis needed).  Installs the
# Debian packages it needs first when run as root (or with sudo).
#
#   ./demo.sh            run until Ctrl-C; prints curl commands to try
#   ./demo.sh --check    make one request through the proxy, print the
#                        response, exit 0 if it came from the backend, else 1
#
# Ports (environment): DEMO_PORT (8080), DEMO_ADMIN_PORT (9180),
# DEMO_BACKEND_PORT (8081).  --check picks free ports itself.
set -uo pipefail
cd "$(dirname "$0")"
SRC=$(pwd)
PY=/usr/bin/python3

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1" >&2; exit 2 ;;
esac

PKGS="build-essential autoconf automake libtool pkg-config libevent-dev libssl-dev libnghttp2-dev
libhiredis-dev libpcre2-dev python3 curl"
missing=()
if command -v dpkg-query >/dev/null; then
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "demo.sh: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { echo "demo.sh: could not install ${missing[*]}" >&2; exit 1; }
fi

# Build (incrementally when build/ already exists).
if [ ! -f build/Makefile ]; then
    if [ -f "$SRC/config.status" ]; then
        echo "demo.sh: the source tree is configured in place; run 'make distclean' there first" >&2
        exit 1
    fi
    { ./autogen.sh >/dev/null 2>&1 || ./autogen.sh; } &&
        mkdir -p build && (cd build && "$SRC/configure" -q) || { echo "demo.sh: configure failed" >&2; exit 1; }
fi
make -s -C build -j2 tollgate >/dev/null || { echo "demo.sh: build failed" >&2; exit 1; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
if [ $check -eq 1 ]; then
    PORT=$(free_port); ADMIN=$(free_port); BPORT=$(free_port)
else
    PORT=${DEMO_PORT:-8080}; ADMIN=${DEMO_ADMIN_PORT:-9180}; BPORT=${DEMO_BACKEND_PORT:-8081}
fi

wait_port() {   # port, seconds
    "$PY" - "$1" "$2" <<'PYEOF'
import socket, sys, time
port, limit = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + limit
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PYEOF
}

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$PY" tests/e2e/backend.py --port "$BPORT" --name demo-backend 2>/dev/null &
pids+=($!)
wait_port "$BPORT" 10 || { echo "demo.sh: the demo backend did not start on port $BPORT" >&2; exit 1; }

if [ $check -eq 1 ]; then
    ./build/tollgate --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" --workers 1 \
        --route "localhost=127.0.0.1:$BPORT" 2>/tmp/demo-tollgate.$$.log &
    pids+=($!)
    if ! wait_port "$PORT" 10; then
        echo "demo.sh: tollgate did not start:"; cat /tmp/demo-tollgate.$$.log; rm -f /tmp/demo-tollgate.$$.log
        exit 1
    fi
    rm -f /tmp/demo-tollgate.$$.log
    out=$(curl -s -i --max-time 10 "http://localhost:$PORT/echo?hello=demo" --connect-to "localhost:$PORT:127.0.0.1:$PORT")
    echo "$ curl -i http://localhost:$PORT/echo?hello=demo"
    echo "$out"
    if echo "$out" | head -n 1 | grep -q "^HTTP/1.1 200" && echo "$out" | grep -qi "^X-Backend: demo-backend"; then
        echo "demo.sh --check: OK, the request went through tollgate to the demo backend"
        exit 0
    fi
    echo "demo.sh --check: FAILED"
    exit 1
fi

./build/tollgate --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    --route "localhost=127.0.0.1:$BPORT" --access-log - &
pids+=($!)
wait_port "$PORT" 10 || { echo "demo.sh: tollgate did not start on port $PORT" >&2; exit 1; }
cat <<MSG

tollgate listens on 127.0.0.1:$PORT and routes Host "localhost" to the demo backend on 127.0.0.1:$BPORT.
Try, in another terminal:

  curl -i http://localhost:$PORT/echo                 # request as the backend saw it (JSON)
  curl -s -o /dev/null -w '%{http_code} %{size_download} bytes\n' http://localhost:$PORT/bytes/1000000
  curl -N http://localhost:$PORT/sse?n=10\&interval=0.5   # server-sent events, streamed
  curl -i -H 'Host: unknown.test' http://127.0.0.1:$PORT/  # 404: no route
  curl http://127.0.0.1:$ADMIN/metrics                 # Prometheus metrics
  curl http://127.0.0.1:$ADMIN/healthz

Access log lines appear below.  Ctrl-C stops everything.

MSG
wait "${pids[1]}"
