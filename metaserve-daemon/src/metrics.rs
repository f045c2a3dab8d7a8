//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the
//! registry, the driver and the process.
//!
//! Every value is read from the server at scrape time and written into a
//! fresh `metrics-exporter-prometheus` recorder, which formats it: nothing
//! is kept between scrapes, so a namespace that disappears leaves no stale
//! series behind, and the QUIC path updates no metric of its own (it keeps
//! plain counters in the registry and two relaxed atomics in the driver).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, UNIX_EPOCH};

use metaserve_tokio::{ErrorCode, MetaServerHandle};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::http::Clock;

/// Outcomes of SIGHUP reloads, for `metaserve_config_reloads_total`.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// The HTTP server's own counts, for the `metaserve_http_*` metrics.
#[derive(Debug, Default)]
pub(crate) struct HttpStats {
    /// Open connections (a gauge).
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_total: AtomicU64,
    pub(crate) refused_per_ip: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) too_large: AtomicU64,
    pub(crate) list_builds: AtomicU64,
}

impl HttpStats {
    pub(crate) fn opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, per_ip: bool) {
        let counter = if per_ip { &self.refused_per_ip } else { &self.refused_total };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn list_built(&self) {
        self.list_builds.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric's name and help text. Counters end in `_total`.
pub(crate) const METRICS: &[(&str, &str)] = &[
    ("metaserve_build_info", "Always 1; the version label names the running build."),
    ("metaserve_namespaces", "Namespaces in existence (with at least one session)."),
    ("metaserve_publishers", "Connected publishers, per namespace."),
    ("metaserve_browsers", "Connected browsers, per namespace."),
    ("metaserve_entries", "Live entries, per namespace."),
    ("metaserve_handshakes_pending", "Connections that have not sent Hello yet."),
    ("metaserve_tombstones", "Tombstones kept for resuming browsers, all namespaces."),
    ("metaserve_registry_revision", "Newest revision handed out by the registry."),
    ("metaserve_bans_active", "Bans in force now."),
    ("metaserve_connections_total", "QUIC connections that completed their handshake."),
    ("metaserve_handshakes_failed_total", "Incoming connections whose QUIC handshake failed (or timed out)."),
    ("metaserve_quic_handshakes_in_progress", "QUIC handshakes in progress (bounded by max_connecting)."),
    (
        "metaserve_quic_attempts_total",
        "QUIC connection attempts decided before any TLS work, by outcome: refused (over max_connecting or \
         max_connecting_per_ip) or retry (asked to validate its address).",
    ),
    ("metaserve_quic_handshakes_timed_out_total", "QUIC handshakes not completed within the handshake timeout."),
    ("metaserve_sessions_accepted_total", "Hellos accepted, by role."),
    (
        "metaserve_heartbeats_accepted_total",
        "Heartbeats accepted: outcome=applied changed an entry, outcome=unchanged repeated its blob (TTL refresh).",
    ),
    (
        "metaserve_heartbeats_coalesced_total",
        "Applied heartbeats that replaced a version no browser had been sent (coalesced by the revision log).",
    ),
    ("metaserve_heartbeats_rejected_total", "Heartbeats that closed their session, by reason."),
    (
        "metaserve_connections_closed_total",
        "Connections closed with an application error code, by code and by the side that closed (server or client).",
    ),
    ("metaserve_connections_lost_total", "Connections that ended without an application close (timeout, reset)."),
    ("metaserve_received_bytes_total", "Bytes read from clients' session streams."),
    ("metaserve_sent_bytes_total", "Bytes written to clients' session streams."),
    ("metaserve_fanout_entries_sent_total", "Upsert and Remove frames sent to browsers (snapshots and deltas)."),
    ("metaserve_browser_resets_total", "Reset frames sent to browsers."),
    ("metaserve_config_reloads_total", "SIGHUP reloads of the config file, by result."),
    ("metaserve_http_connections", "Open HTTP connections."),
    ("metaserve_http_connections_accepted_total", "HTTP connections accepted within the connection limits."),
    (
        "metaserve_http_connections_refused_total",
        "HTTP connections closed as soon as accepted, by the limit they were over: max_connections or \
         max_connections_per_ip.",
    ),
    (
        "metaserve_http_connections_dropped_total",
        "HTTP connections the daemon closed, by reason: header_timeout (no whole request head in time), \
         idle_timeout (nothing moved in time), request_too_large (request head over max_request_head).",
    ),
    (
        "metaserve_http_list_builds_total",
        "Namespace lists serialized to JSON for GET /v1/namespaces/{ns}/servers (at most one per namespace \
         per second; other requests share them).",
    ),
    ("process_cpu_seconds_total", "User and system CPU time spent, in seconds."),
    ("process_resident_memory_bytes", "Resident memory size, in bytes."),
    ("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds."),
    ("process_open_fds", "Open file descriptors."),
];

fn label(code: ErrorCode) -> String {
    code.to_string()
}

fn reason(code: ErrorCode) -> String {
    code.to_string().to_ascii_lowercase()
}

/// The exposition text, read from `server` now.
pub(crate) fn render(server: &MetaServerHandle, clock: &Clock, reloads: &Reloads, http: &HttpStats) -> String {
    let stats = server.stats();
    let counters = server.counters();
    let traffic = server.traffic();
    let namespaces = server.namespaces();
    let now = Instant::now();
    let bans_active = server.bans().iter().filter(|b| b.is_active(now)).count();

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        for &(name, help) in METRICS {
            if name.ends_with("_total") && name != "process_cpu_seconds_total" {
                describe_counter!(name, help);
            } else {
                describe_gauge!(name, help);
            }
        }
        gauge!("metaserve_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        gauge!("metaserve_namespaces").set(stats.namespaces as f64);
        for ns in &namespaces {
            let name = ns.name.to_string();
            gauge!("metaserve_publishers", "namespace" => name.clone()).set(ns.publishers as f64);
            gauge!("metaserve_browsers", "namespace" => name.clone()).set(ns.browsers as f64);
            gauge!("metaserve_entries", "namespace" => name).set(ns.entries as f64);
        }
        gauge!("metaserve_handshakes_pending").set(stats.handshakes as f64);
        gauge!("metaserve_tombstones").set(stats.tombstones as f64);
        gauge!("metaserve_registry_revision").set(stats.revision as f64);
        gauge!("metaserve_bans_active").set(bans_active as f64);

        counter!("metaserve_connections_total").absolute(traffic.connections);
        counter!("metaserve_handshakes_failed_total").absolute(traffic.handshakes_failed);
        gauge!("metaserve_quic_handshakes_in_progress").set(traffic.handshakes_in_progress as f64);
        counter!("metaserve_quic_attempts_total", "outcome" => "refused").absolute(traffic.attempts_refused);
        counter!("metaserve_quic_attempts_total", "outcome" => "retry").absolute(traffic.retries);
        counter!("metaserve_quic_handshakes_timed_out_total").absolute(traffic.handshakes_timed_out);
        counter!("metaserve_sessions_accepted_total", "role" => "publisher").absolute(counters.publishers_accepted);
        counter!("metaserve_sessions_accepted_total", "role" => "browser").absolute(counters.browsers_accepted);
        counter!("metaserve_heartbeats_accepted_total", "outcome" => "applied").absolute(stats.heartbeats_applied);
        counter!("metaserve_heartbeats_accepted_total", "outcome" => "unchanged").absolute(stats.heartbeats_unchanged);
        counter!("metaserve_heartbeats_coalesced_total").absolute(counters.heartbeats_coalesced);
        // Every reason is always present, so rates work from the first scrape.
        for code in [ErrorCode::BLOB_TOO_LARGE, ErrorCode::FRAME_TOO_LARGE, ErrorCode::PROTOCOL_VIOLATION] {
            counter!("metaserve_heartbeats_rejected_total", "reason" => reason(code))
                .absolute(counters.heartbeats_rejected.get(code));
        }
        for code in ErrorCode::ALL.iter().copied() {
            let n = counters.closed.get(code) + counters.refused.get(code) + traffic.closed_by_server.get(code);
            if n > 0 {
                counter!("metaserve_connections_closed_total", "by" => "server", "code" => label(code)).absolute(n);
            }
        }
        for (code, n) in traffic.closed_by_client.iter() {
            counter!("metaserve_connections_closed_total", "by" => "client", "code" => label(code)).absolute(n);
        }
        if traffic.closed_by_client.other() > 0 {
            counter!("metaserve_connections_closed_total", "by" => "client", "code" => "other")
                .absolute(traffic.closed_by_client.other());
        }
        counter!("metaserve_connections_lost_total").absolute(traffic.lost);
        counter!("metaserve_received_bytes_total").absolute(traffic.bytes_received);
        counter!("metaserve_sent_bytes_total").absolute(traffic.bytes_sent);
        counter!("metaserve_fanout_entries_sent_total").absolute(counters.entries_sent);
        counter!("metaserve_browser_resets_total").absolute(counters.resets);
        counter!("metaserve_config_reloads_total", "result" => "success")
            .absolute(reloads.succeeded.load(Ordering::Relaxed));
        counter!("metaserve_config_reloads_total", "result" => "failure")
            .absolute(reloads.failed.load(Ordering::Relaxed));
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        gauge!("metaserve_http_connections").set(load(&http.open) as f64);
        counter!("metaserve_http_connections_accepted_total").absolute(load(&http.accepted));
        for (reason, n) in [("max_connections", &http.refused_total), ("max_connections_per_ip", &http.refused_per_ip)]
        {
            counter!("metaserve_http_connections_refused_total", "reason" => reason).absolute(load(n));
        }
        for (reason, n) in [
            ("header_timeout", &http.header_timeouts),
            ("idle_timeout", &http.idle_timeouts),
            ("request_too_large", &http.too_large),
        ] {
            counter!("metaserve_http_connections_dropped_total", "reason" => reason).absolute(load(n));
        }
        counter!("metaserve_http_list_builds_total").absolute(load(&http.list_builds));

        let process = process::read();
        if let Some(cpu) = process.cpu_seconds {
            // `metrics` counters are integers; CPU seconds need their fraction,
            // so this one is typed gauge (rate() works the same on it).
            gauge!("process_cpu_seconds_total").set(cpu);
        }
        if let Some(rss) = process.resident_bytes {
            gauge!("process_resident_memory_bytes").set(rss as f64);
        }
        if let Some(fds) = process.open_fds {
            gauge!("process_open_fds").set(fds as f64);
        }
        let start = clock.started().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        gauge!("process_start_time_seconds").set(start.floor());
    });
    handle.render()
}

mod process {
    /// What the process knows about itself; `None` where the platform does not tell.
    #[derive(Debug, Default)]
    pub(super) struct Process {
        pub(super) cpu_seconds: Option<f64>,
        pub(super) resident_bytes: Option<u64>,
        pub(super) open_fds: Option<usize>,
    }

    pub(super) fn read() -> Process {
        Process { cpu_seconds: cpu_seconds(), resident_bytes: resident_bytes(), open_fds: open_fds() }
    }

    #[cfg(unix)]
    fn cpu_seconds() -> Option<f64> {
        use nix::sys::resource::{getrusage, UsageWho};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
        Some(secs(usage.user_time()) + secs(usage.system_time()))
    }

    #[cfg(not(unix))]
    fn cpu_seconds() -> Option<f64> {
        None
    }

    #[cfg(target_os = "linux")]
    fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
        kib.parse::<u64>().ok().map(|k| k * 1024)
    }

    #[cfg(not(target_os = "linux"))]
    fn resident_bytes() -> Option<u64> {
        None
    }

    #[cfg(target_os = "linux")]
    fn open_fds() -> Option<usize> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
    }

    #[cfg(not(target_os = "linux"))]
    fn open_fds() -> Option<usize> {
        None
    }
}
