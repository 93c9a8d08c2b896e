#!/bin/bash
# bench/run-all.sh — run every benchmark in turn and keep each one's output.
#
# Debian packages: those of the scripts it runs (each installs its own).
#
# Runs http1-vs-nginx.sh (with HAPROXY=1), idle-conns.sh, big-transfer.sh and
# routing.sh one after the other (never two at once: they would share the two
# cores), each with the environment given to this script, and writes
# OUT/<name>.txt (stdout: the report) and OUT/<name>.log (progress).  The
# machine line at the top of each report gives the date and the load.
#
# Usage: BUILD=/path/to/build bench/run-all.sh [OUT]   (default OUT: ./bench-results-<UTC date>)
#        ONLY="idle-conns big-transfer" to run a subset.

set -uo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
out=${1:-./bench-results-$(date -u +%Y%m%dT%H%MZ)}
mkdir -p "$out"
rc=0
for name in ${ONLY:-http1-vs-nginx idle-conns big-transfer routing}; do
    echo "== $name (output in $out/$name.txt)" >&2
    extra=()
    [ "$name" = http1-vs-nginx ] && extra=(HAPROXY="${HAPROXY:-1}")
    env "${extra[@]}" "$dir/$name.sh" > "$out/$name.txt" 2> "$out/$name.log" || {
        echo "   $name failed: see $out/$name.log" >&2; rc=1; }
    cat "$out/$name.txt"
    echo
done
exit $rc
