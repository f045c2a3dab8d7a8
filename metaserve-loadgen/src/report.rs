//! The progress line, the final tables, and the JSON report.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::baseline;
use crate::stats::LatencySummary;

/// Progress lines on stderr: redrawn in place on a terminal, one per line
/// otherwise, nothing with `--quiet`.
#[derive(Debug)]
pub(crate) struct Progress {
    enabled: bool,
    terminal: bool,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Self {
        Progress { enabled: !quiet, terminal: std::io::stderr().is_terminal() }
    }

    pub(crate) fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal { write!(err, "\r\x1b[K{text}") } else { writeln!(err, "{text}") };
        let _ = err.flush();
    }

    /// Ends a line being redrawn, so what follows starts on a fresh one.
    pub(crate) fn done(&self) {
        if self.enabled && self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// `1536` → `1.5 KiB`.
pub(crate) fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let unit = UNITS.get(unit).copied().unwrap_or("B");
    if unit == "B" {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// A byte rate with its bit rate: `12.3 MiB/s (103 Mbit/s)`.
pub(crate) fn rate_bytes(per_s: f64) -> String {
    let mbit = per_s * 8.0 / 1e6;
    if mbit < 10.0 {
        format!("{}/s ({mbit:.2} Mbit/s)", bytes(per_s))
    } else {
        format!("{}/s ({mbit:.0} Mbit/s)", bytes(per_s))
    }
}

/// `1234567` → `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A quantity over the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Amount {
    pub(crate) total: u64,
    pub(crate) per_s: f64,
}

impl Amount {
    pub(crate) fn over(total: u64, secs: f64) -> Self {
        Amount { total, per_s: if secs > 0.0 { total as f64 / secs } else { 0.0 } }
    }
}

/// CPU and memory of a process over the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct ProcReport {
    pub(crate) cpu_s: f64,
    /// CPU seconds / wall seconds × 100 (100 = one core busy).
    pub(crate) cpu_percent: f64,
    /// VmRSS at the start of the window.
    pub(crate) rss_start_kib: u64,
    /// VmRSS at the end of the window.
    pub(crate) rss_kib: u64,
    /// Largest VmRSS sampled (once a second) in the window.
    pub(crate) rss_max_sampled_kib: u64,
    /// VmHWM: peak RSS since the process started (includes setup).
    pub(crate) peak_rss_kib: u64,
    pub(crate) threads: u64,
}

/// The run's parameters as in force.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunConfig {
    pub(crate) publishers: usize,
    pub(crate) browsers: usize,
    /// Browsers that never read (not counted in `browsers`).
    pub(crate) stalled_browsers: usize,
    pub(crate) rate_hz: f64,
    pub(crate) size_bytes: usize,
    pub(crate) duration_s: f64,
    pub(crate) warmup_s: f64,
    pub(crate) namespace: String,
    /// From the daemon's Welcome.
    pub(crate) update_interval_s: Option<f64>,
    /// From the daemon's Welcome.
    pub(crate) heartbeat_interval_s: Option<f64>,
    pub(crate) publisher_endpoints: usize,
    pub(crate) browser_endpoints: usize,
    pub(crate) daemon: String,
    pub(crate) daemon_addr: String,
    pub(crate) daemon_pid: Option<u32>,
}

/// How the clients fared.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Health {
    pub(crate) publishers_failed: usize,
    pub(crate) publishers_clean_goodbye: usize,
    pub(crate) publishers_hung: usize,
    pub(crate) browsers_failed: usize,
    pub(crate) browsers_hung: usize,
    pub(crate) removes_in_window: u64,
    pub(crate) resets: u64,
    pub(crate) first_error: Option<String>,
    /// The window was cut short by Ctrl-C or failing browsers.
    pub(crate) interrupted: bool,
}

/// Everything `run` measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    pub(crate) config: RunConfig,
    /// From the first connection attempt until every browser held every publisher.
    pub(crate) setup_s: f64,
    pub(crate) window_s: f64,
    /// Heartbeats handed to `publish` in the window.
    pub(crate) heartbeats: Amount,
    /// Upserts received by all browsers of heartbeats sent in the window
    /// (counted on arrival, also just after the window closes).
    pub(crate) delivered: Amount,
    /// What the browsers would receive with no loss: heartbeats × browsers,
    /// less what the update interval coalesces by design (one update per
    /// publisher per interval at most).
    pub(crate) expected_per_s: f64,
    pub(crate) delivery_ratio: f64,
    /// Heartbeats that browsers never saw because a newer one replaced them.
    pub(crate) coalesced: u64,
    /// Blob bytes in the delivered Upserts.
    pub(crate) blob_bytes: Amount,
    /// UDP bytes received by all browsers: the daemon's fan-out.
    pub(crate) fanout_udp_bytes: Amount,
    /// UDP bytes sent by all publishers: the daemon's ingress.
    pub(crate) ingress_udp_bytes: Amount,
    /// Heartbeat handed to `publish` → Upsert event at a browser. With R ≥
    /// 1 / update interval this includes the wait for the next update
    /// (uniform over one interval, by design).
    pub(crate) latency: LatencySummary,
    /// Per batch, its freshest entry's latency: about the daemon's flush →
    /// browser delay, without the wait for the update interval (but with up
    /// to one send spacing, 1 / (publishers × rate)).
    pub(crate) batch_floor: LatencySummary,
    /// Per batch, first → last Upsert received: how long a whole update
    /// takes to reach a browser.
    pub(crate) batch_span: LatencySummary,
    pub(crate) daemon: Option<ProcReport>,
    pub(crate) loadgen: ProcReport,
    pub(crate) load_average_start: Option<[f64; 3]>,
    pub(crate) load_average_end: Option<[f64; 3]>,
    pub(crate) health: Health,
    /// Raw quinn with `browsers` parallel connections (`--baseline`).
    pub(crate) baseline: Option<baseline::Phase>,
    /// fanout_udp_bytes.per_s / baseline.udp_bytes_per_s.
    pub(crate) fanout_fraction_of_baseline: Option<f64>,
}

fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0} µs", v * 1000.0)
    } else if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

fn kib(v: u64) -> String {
    bytes(v as f64 * 1024.0)
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or_else(|| "?".to_owned(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}

/// The latency percentiles on one line.
pub(crate) fn latency_line(l: &LatencySummary) -> String {
    if l.samples == 0 {
        return "no samples".to_owned();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {}, n={})",
        ms(l.p50_ms),
        ms(l.p90_ms),
        ms(l.p99_ms),
        ms(l.p999_ms),
        ms(l.max_ms),
        ms(l.mean_ms),
        count(l.samples)
    )
}

impl RunReport {
    /// The human-readable report.
    pub(crate) fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let c = &self.config;
        let interval = |s: Option<f64>| s.map_or_else(|| "?".to_owned(), |s| format!("{s}s"));
        writeln!(
            out,
            "metaserve-loadgen run: {} publishers × {} Hz × {} B, {} browsers{}, window {:.1} s{}",
            count(c.publishers as u64),
            c.rate_hz,
            c.size_bytes,
            count(c.browsers as u64),
            if c.stalled_browsers > 0 {
                format!(" (+ {} that never read)", count(c.stalled_browsers as u64))
            } else {
                String::new()
            },
            self.window_s,
            if self.health.interrupted { " (INTERRUPTED)" } else { "" }
        )?;
        writeln!(
            out,
            "daemon {} at {}{}; update interval {}, heartbeat interval {}; {} + {} client endpoints; setup {:.1} s",
            c.daemon,
            c.daemon_addr,
            c.daemon_pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
            interval(c.update_interval_s),
            interval(c.heartbeat_interval_s),
            c.publisher_endpoints,
            c.browser_endpoints,
            self.setup_s,
        )?;
        writeln!(out)?;
        writeln!(out, "  {:<30} {:>14} {:>34}", "", "total", "per second")?;
        let row = |out: &mut dyn Write, name: &str, total: String, rate: String| {
            writeln!(out, "  {name:<30} {total:>14} {rate:>34}")
        };
        row(out, "heartbeats sent", count(self.heartbeats.total), format!("{:.1}", self.heartbeats.per_s))?;
        row(out, "updates delivered", count(self.delivered.total), format!("{:.1}", self.delivered.per_s))?;
        row(
            out,
            "  expected (sent × browsers)",
            String::new(),
            format!("{:.1}  ({:.1} %)", self.expected_per_s, self.delivery_ratio * 100.0),
        )?;
        row(out, "  coalesced (by design)", count(self.coalesced), String::new())?;
        row(out, "blob bytes delivered", bytes(self.blob_bytes.total as f64), rate_bytes(self.blob_bytes.per_s))?;
        row(
            out,
            "fan-out UDP bytes (browsers)",
            bytes(self.fanout_udp_bytes.total as f64),
            rate_bytes(self.fanout_udp_bytes.per_s),
        )?;
        row(
            out,
            "ingress UDP bytes (publishers)",
            bytes(self.ingress_udp_bytes.total as f64),
            rate_bytes(self.ingress_udp_bytes.per_s),
        )?;
        writeln!(out)?;
        writeln!(out, "  delivery latency   {}", latency_line(&self.latency))?;
        writeln!(out, "  freshest in batch  {}", latency_line(&self.batch_floor))?;
        writeln!(out, "  batch span         {}", latency_line(&self.batch_span))?;
        writeln!(out)?;
        let proc_line = |out: &mut dyn Write, name: &str, p: &ProcReport| {
            writeln!(
                out,
                "  {name:<18} CPU {:.2} s = {:.1} %   RSS {} at start, {} at end (max sampled {}, peak VmHWM {})   {} threads",
                p.cpu_s,
                p.cpu_percent,
                kib(p.rss_start_kib),
                kib(p.rss_kib),
                kib(p.rss_max_sampled_kib),
                kib(p.peak_rss_kib),
                p.threads
            )
        };
        match &self.daemon {
            Some(d) => proc_line(out, "daemon", d)?,
            None => writeln!(out, "  daemon             not measured (pass --pid)")?,
        }
        proc_line(out, "load generator", &self.loadgen)?;
        writeln!(
            out,
            "  load average       {} at start, {} at end ({} cores)",
            load(self.load_average_start),
            load(self.load_average_end),
            std::thread::available_parallelism().map_or(0, usize::from)
        )?;
        if let (Some(b), Some(f)) = (&self.baseline, self.fanout_fraction_of_baseline) {
            writeln!(
                out,
                "  raw quinn          {} connections: {} UDP, {} stream; fan-out is {:.1} % of it",
                b.connections,
                rate_bytes(b.udp_bytes_per_s),
                rate_bytes(b.stream_bytes_per_s),
                f * 100.0
            )?;
        }
        let h = &self.health;
        writeln!(
            out,
            "  clients            publishers: {} failed, {} clean Goodbye, {} hung; browsers: {} failed, {} hung; \
             {} removes, {} resets",
            h.publishers_failed,
            h.publishers_clean_goodbye,
            h.publishers_hung,
            h.browsers_failed,
            h.browsers_hung,
            h.removes_in_window,
            h.resets
        )?;
        if let Some(e) = &h.first_error {
            writeln!(out, "  first error        {e}")?;
        }
        Ok(())
    }
}

/// The human-readable baseline report.
pub(crate) fn write_baseline(out: &mut impl Write, report: &baseline::Report) -> std::io::Result<()> {
    writeln!(out, "raw quinn bulk throughput on loopback (metaserve TLS and transport settings, server → client)")?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:<14} {:>8} {:>30} {:>30} {:>11} {:>11}",
        "", "window", "stream payload", "UDP", "sender CPU", "total CPU"
    )?;
    for (name, p) in [("1 stream", &report.one_stream), ("parallel", &report.parallel)] {
        writeln!(
            out,
            "  {:<14} {:>7.1}s {:>30} {:>30} {:>10.0}% {:>10.0}%",
            format!("{name} ({})", p.connections),
            p.window_s,
            rate_bytes(p.stream_bytes_per_s),
            rate_bytes(p.udp_bytes_per_s),
            p.sender_cpu_percent,
            p.process_cpu_percent
        )?;
    }
    writeln!(
        out,
        "\n  load average {} ({} cores)",
        load(crate::procfs::loadavg()),
        std::thread::available_parallelism().map_or(0, usize::from)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert_eq!(rate_bytes(1e6), "976.6 KiB/s (8.00 Mbit/s)");
        assert_eq!(rate_bytes(1e8), "95.4 MiB/s (800 Mbit/s)");
        assert_eq!(Amount::over(10, 4.0).per_s, 2.5);
        assert_eq!(Amount::over(10, 0.0).per_s, 0.0);
    }
}
