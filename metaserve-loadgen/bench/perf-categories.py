#!/usr/bin/env python3
"""Groups a perf report (--sort dso,symbol) into cost categories."""
import subprocess, sys, re, collections
data = sys.argv[1]
out = subprocess.run(["perf","report","-i",data,"--no-children","--sort","dso,symbol","--stdio","-g","none","--percent-limit","0"],capture_output=True,text=True).stdout
cats = collections.OrderedDict((k,0.0) for k in ["metaserve (registry + driver)","quinn + quinn-proto","crypto (ring, rustls)","tokio","memmove/memcpy","malloc/free","other user","kernel: UDP send/recv","kernel: scheduling, futex, timers","kernel: other"])
for line in out.splitlines():
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m: continue
    pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
    if kind == "k":
        if re.search(r"udp|ip_|skb|sock|_copy_|net|nf_|lo_|dev_|napi|inet|recvmsg|sendmsg|csum|__sys_|copy_", sym): c = "kernel: UDP send/recv"
        elif re.search(r"sched|switch|wake|futex|hrtimer|schedule|irq|ttwu|enqueue|dequeue|update_|pick_|epoll|timer|clock|idle", sym): c = "kernel: scheduling, futex, timers"
        else: c = "kernel: other"
    elif "metaserve" in sym: c = "metaserve (registry + driver)"
    elif "quinn" in sym: c = "quinn + quinn-proto"
    elif "ring" in sym or "rustls" in sym or "aes" in sym or "gcm" in sym: c = "crypto (ring, rustls)"
    elif "tokio" in sym: c = "tokio"
    elif "memmove" in sym or "memcpy" in sym: c = "memmove/memcpy"
    elif re.search(r"malloc|free|_int_|unlink_chunk|realloc|cfree", sym): c = "malloc/free"
    else: c = "other user"
    cats[c] += pct
for k, v in cats.items():
    print(f"| {k} | {v:.1f} % |")
