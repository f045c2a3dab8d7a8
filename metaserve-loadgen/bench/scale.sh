#!/bin/bash
# Beyond the matrix (S = 256 B, R = 1 Hz, update interval 1 s): where does
# p99 delivery latency pass 1.5 s, or delivery fall behind? Updates per second
# (P × B × R) is what loads the machine, so the runs bracket the knee along it
# and also move the same product between publishers and browsers. A run whose
# browsers cannot catch up never completes setup (every browser must hold the
# full list at a Synced) and ends at --setup-timeout. About 10 minutes.
# usage: scale.sh [BIN_DIR] [OUT_DIR]
set -u
bin=${1:-target/release}; out=${2:-bench-out/scale}; mkdir -p "$out"
for pb in "50000 10" "20000 25" "10000 50" "7500 100" "5000 150" "5000 200"; do
  set -- $pb; p=$1; b=$2
  echo "== p=$p b=$b $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout 600 "$bin/metaserve-loadgen" run --daemon "$bin/metaserve-daemon" -p $p -b $b --rate 1 --size 256 \
    --update-interval 1s --duration 30s --setup-timeout 120s --json > "$out/run-p$p-b$b.json" 2> "$out/run-p$p-b$b.err"
  echo "rc=$?"
  tail -n 2 "$out/run-p$p-b$b.err"
done
python3 "$(dirname "$0")/table.py" "$out"
