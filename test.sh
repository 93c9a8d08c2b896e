#!/bin/bash
# test.sh: builds tollgate in a fresh folder and runs every test (`make check`:
# Check unit tests, then the end-to-end suite).  On a fresh Debian 12 machine,
# run as root (or with sudo available) it first installs the Debian packages
# it needs.  Its last line is "N passed, M failed"; exit status 1 on failure.
#
#   ./test.sh                 build in build/ and test
#   ./test.sh --sanitizers    build in build-asan/ with ASan+UBSan and test
#   TG_TEST_FILTER=substring ./test.sh    run only the e2e tests matching it
set -uo pipefail
cd "$(dirname "$0")"
SRC=$(pwd)

builddir=build
confargs=()
for a in "$@"; do
    case "$a" in
        --sanitizers) builddir=build-asan; confargs+=(--enable-sanitizers) ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "test.sh: unknown argument $a" >&2; exit 2 ;;
    esac
done

PKGS="build-essential autoconf automake libtool pkg-config libevent-dev libssl-dev libnghttp2-dev
libhiredis-dev libpcre2-dev check redis-server curl python3 python3-h2 python3-websockets nghttp2-client"

# Installs the Debian packages that are missing (needs root or sudo and apt-get).
install_missing() {
    local missing=()
    for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "test.sh: installing ${missing[*]}"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo="sudo"; else
            echo "test.sh: missing packages: ${missing[*]} (run as root or: apt-get install ${missing[*]})" >&2
            return 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
    install_missing || exit 1
fi

if [ -f "$SRC/config.status" ]; then
    echo "test.sh: the source tree is configured in place; run 'make distclean' there first" >&2
    exit 1
fi

build() {
    (./autogen.sh >/dev/null 2>&1 || ./autogen.sh) &&
    rm -rf "$builddir" && mkdir -p "$builddir" && cd "$builddir" &&
    "$SRC/configure" -q "${confargs[@]}" && make -j2
}
if ! build; then
    echo "test.sh: the build failed"
    echo "0 passed, 1 failed"
    exit 1
fi
cd "$SRC/$builddir"
log=$(mktemp)
make check 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
rm -f "$log"
if [ -z "$summary" ]; then
    summary="0 passed, 1 failed"
    status=1
elif [ "$status" -ne 0 ] && echo "$summary" | grep -q ' 0 failed$'; then
    summary="${summary% 0 failed} 1 failed"     # make check failed outside the counted tests
fi
echo "$summary"
exit "$status"
