#!/usr/bin/env python3
"""Markdown table from metaserve-loadgen run-*.json files."""
import json, sys, glob, os
d = sys.argv[1]
rows = []
for f in glob.glob(os.path.join(d, "run-*.json")):
    try:
        r = json.load(open(f))
    except Exception as e:
        print(f"{f}: {e}", file=sys.stderr); continue
    c = r["config"]
    rows.append((c["publishers"], c["browsers"], r))
rows.sort(key=lambda x: (x[0], x[1]))
print("| P | B | P×B | latency p50 | p99 | max | delivered/s | of expected | daemon CPU | daemon RSS (peak) | fan-out UDP B/s | baseline UDP B/s (B conns) | fan-out / baseline |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
def b(x):
    for u in ["B","KiB","MiB","GiB"]:
        if x < 1024: return f"{x:.1f} {u}"
        x /= 1024
    return f"{x:.1f} TiB"
for p, br, r in rows:
    L = r["latency"]; dm = r["daemon"] or {}; bl = r.get("baseline") or {}
    frac = r.get("fanout_fraction_of_baseline")
    print(f"| {p:,} | {br} | {p*br:,} | {L['p50_ms']:.0f} ms | {L['p99_ms']:.0f} ms | {L['max_ms']:.0f} ms | {r['delivered']['per_s']:,.0f} | {100*r['delivery_ratio']:.1f} % | {dm.get('cpu_percent',0):.1f} % | {dm.get('peak_rss_kib',0)/1024:.1f} MiB | {b(r['fanout_udp_bytes']['per_s'])}/s | {b(bl.get('udp_bytes_per_s',0))}/s | {frac*100 if frac else 0:.3f} % |")
