#!/bin/bash
# Per-browser CPU per update interval against list size. Each pair of runs
# differs only in B (1 or 200); the daemon's extra CPU over 199 browsers and
# 60 one-second intervals is the per-browser cost. 1 % of entries per second
# at 1,000 and 50,000 entries, then the same absolute change rates swapped
# (10/s at 50,000 entries, 500/s at 1,000). About 14 minutes; the 50,000-
# publisher runs need ~2 GB of RAM in the daemon and ~4 GB in the load generator.
# usage: flatness.sh [BIN_DIR] [OUT_DIR]
set -u
bin=${1:-target/release}; out=${2:-bench-out/flatness}; mkdir -p "$out"
for pr in "1000 0.01" "50000 0.01" "50000 0.0002" "1000 0.5"; do
  set -- $pr; p=$1; r=$2
  for b in 1 200; do
    name=flat-p$p-r$r-b$b
    echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    timeout 900 "$bin/metaserve-loadgen" run --daemon "$bin/metaserve-daemon" -p $p -b $b --rate $r --size 256 \
      --duration 60s --setup-timeout 400s --json -q > "$out/$name.json" 2> "$out/$name.err"
    echo "rc=$?"
  done
done
python3 "$(dirname "$0")/flatness.py" "$out"
