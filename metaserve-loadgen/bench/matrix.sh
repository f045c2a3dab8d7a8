#!/bin/bash
# The issue-6 matrix: P ∈ {100, 1000, 5000} × B ∈ {1, 10, 100}, S = 256 B,
# R = 1 Hz, update interval 1 s, 30 s windows, each with a 10 s raw quinn
# baseline over B connections. About 7 minutes.
# usage: matrix.sh [BIN_DIR (default target/release)] [OUT_DIR (default bench-out/matrix)]
set -u
bin=${1:-target/release}; out=${2:-bench-out/matrix}; mkdir -p "$out"
for p in 100 1000 5000; do for b in 1 10 100; do
  echo "== p=$p b=$b $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout 300 "$bin/metaserve-loadgen" run --daemon "$bin/metaserve-daemon" --publishers $p --browsers $b \
    --rate 1 --size 256 --update-interval 1s --duration 30s --baseline 10s --json -q \
    > "$out/run-p$p-b$b.json" 2> "$out/run-p$p-b$b.err"
  echo "rc=$?"
done; done
timeout 120 "$bin/metaserve-loadgen" baseline --connections 10 --duration 10s --json > "$out/baseline.json" 2> "$out/baseline.err"
python3 "$(dirname "$0")/table.py" "$out"
