#!/usr/bin/env python3
"""Per-browser daemon CPU per update interval, from flatness.sh's pairs of runs.

For each (P, rate), the runs with B = 1 and B = 200 differ only in browsers:
the daemon's extra CPU seconds (the B = 1 run scaled to the same window),
divided by 199 browsers and by the window's update intervals, is one
browser's cost per interval; divided by the extra updates delivered instead,
its cost per update.
usage: flatness.py OUT_DIR
"""
import glob, json, os, re, sys

d = sys.argv[1]
pairs = {}
for f in glob.glob(os.path.join(d, "flat-*.json")):
    m = re.search(r"flat-p(\d+)-r([\d.]+)-b(\d+)\.json$", f)
    if not m:
        continue
    pairs.setdefault((int(m.group(1)), m.group(2)), {})[int(m.group(3))] = json.load(open(f))
print("| entries | changes/s | CPU s, B = 1 | CPU s, B = 200 | per browser per interval | per update delivered | p99 latency (B = 200) |")
print("|---|---|---|---|---|---|---|")
for (p, rate), runs in sorted(pairs.items(), key=lambda kv: (float(kv[0][1]) * kv[0][0], kv[0][0])):
    if 1 not in runs or 200 not in runs:
        continue
    a, b = runs[1], runs[200]
    scale = b["window_s"] / a["window_s"]
    extra_cpu = b["daemon"]["cpu_s"] - a["daemon"]["cpu_s"] * scale
    intervals = b["window_s"] / (b["config"]["update_interval_s"] or 1.0)
    extra_updates = b["delivered"]["total"] - a["delivered"]["total"] * scale
    print(f"| {p:,} | {b['heartbeats']['per_s']:,.0f} | {a['daemon']['cpu_s']:.2f} | {b['daemon']['cpu_s']:.2f} "
          f"| {1e6 * extra_cpu / 199 / intervals:.1f} µs | {1e6 * extra_cpu / max(extra_updates, 1):.2f} µs "
          f"| {b['latency']['p99_ms']:,.0f} ms |")
