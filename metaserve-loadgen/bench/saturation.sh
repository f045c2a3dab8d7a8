#!/bin/bash
# Fan-out against raw quinn, at saturation: 50 publishers × 20 Hz × 16 KiB
# blobs, 100 browsers, 50 ms update interval (offered fan-out ≈ 1.6 GB/s, more
# than this machine moves), 20 s window, then raw quinn over 100 connections
# for 10 s. Runs the two daemons alternately, three times each (~7 minutes).
# usage: saturation.sh BEFORE_DAEMON AFTER_DAEMON [LOADGEN] [OUT_DIR]
set -u
before=$1; after=$2; lg=${3:-target/release/metaserve-loadgen}; out=${4:-bench-out/saturation}; mkdir -p "$out"
for i in 1 2 3; do for v in before after; do
  d=$before; [ $v = after ] && d=$after
  echo "== sat-$v-$i $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  timeout 300 "$lg" run --daemon "$d" -p 50 -b 100 --rate 20 --size 16384 --update-interval 50ms \
    --duration 20s --baseline 10s --json -q > "$out/sat-$v-$i.json" 2> "$out/sat-$v-$i.err"
  echo "rc=$? fan-out/baseline $(jq .fanout_fraction_of_baseline "$out/sat-$v-$i.json")"
done; done
