#!/bin/bash
# Browsers that never read: 1,000 publishers at 1 Hz and 10 reading browsers,
# with and without 100 browsers that say Hello and never read a byte.
# 30 s warm-up (the allocator's working set settles), then a 60 s window;
# the report has the daemon's RSS at the window's start and end. Then one
# 300 s window with the stalled browsers, whose progress lines (stderr) show
# RSS every second. About 10 minutes.
# usage: memory.sh [BIN_DIR] [OUT_DIR]
set -u
bin=${1:-target/release}; out=${2:-bench-out/memory}; mkdir -p "$out"
run() { local name=$1; shift
  echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout 900 "$bin/metaserve-loadgen" run --daemon "$bin/metaserve-daemon" "$@" --json > "$out/$name.json" 2> "$out/$name.err"
  echo "rc=$? rss start $(jq .daemon.rss_start_kib "$out/$name.json") KiB end $(jq .daemon.rss_kib "$out/$name.json") KiB"; }
run stalled-100 -p 1000 -b 10 --stalled-browsers 100 --rate 1 --warmup 30s --duration 60s
run stalled-0   -p 1000 -b 10 --rate 1 --warmup 30s --duration 60s
run stalled-100-300s -p 1000 -b 10 --stalled-browsers 100 --rate 1 --duration 300s
