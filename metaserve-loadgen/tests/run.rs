//! The load generator end to end: the real binary drives the real daemon
//! (the debug build that `cargo test --workspace` makes beside it) for a
//! couple of seconds, and its JSON report must describe what happened.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::Command;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metaserve-loadgen"))
}

/// The daemon built into the same target directory as the load generator.
fn daemon() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_metaserve-loadgen"));
    let path = exe.with_file_name(format!("metaserve-daemon{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} is missing: run `cargo build -p metaserve-daemon` first", path.display());
    path
}

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "exit {}\nstderr:\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("--json prints one JSON document")
}

fn f64_at(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path).and_then(serde_json::Value::as_f64).unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

#[test]
fn a_short_run_reports_deliveries_latency_and_the_daemons_resources() {
    let output = loadgen()
        .args(["run", "--daemon"])
        .arg(daemon())
        .args(["--publishers", "20", "--browsers", "3", "--stalled-browsers", "2", "--rate", "5", "--size", "64"])
        .args(["--update-interval", "100ms", "--duration", "2s", "--warmup", "500ms", "--json", "--quiet"])
        .output()
        .expect("running metaserve-loadgen");
    let report = json(&output);

    assert_eq!(f64_at(&report, "/config/publishers"), 20.0);
    assert_eq!(f64_at(&report, "/config/stalled_browsers"), 2.0);
    // 20 × 5 Hz for 2 s, paced by the publishers' own timers.
    let heartbeats = f64_at(&report, "/heartbeats/total");
    assert!((120.0..=280.0).contains(&heartbeats), "heartbeats {heartbeats}");
    // Every browser receives every heartbeat: the update interval (100 ms)
    // is shorter than the heartbeat period (200 ms), so nothing coalesces
    // but the beats that straddle the window's edges.
    let ratio = f64_at(&report, "/delivery_ratio");
    assert!((0.8..=1.2).contains(&ratio), "delivery ratio {ratio}");
    let p50 = f64_at(&report, "/latency/p50_ms");
    assert!(p50 > 0.0 && p50 < 1_000.0, "p50 {p50} ms");
    assert!(f64_at(&report, "/fanout_udp_bytes/total") > f64_at(&report, "/blob_bytes/total"));
    // The daemon was found and measured.
    assert!(f64_at(&report, "/daemon/rss_start_kib") > 0.0);
    assert!(f64_at(&report, "/daemon/peak_rss_kib") >= f64_at(&report, "/daemon/rss_kib"));
    assert_eq!(f64_at(&report, "/health/publishers_failed"), 0.0);
    assert_eq!(f64_at(&report, "/health/browsers_failed"), 0.0);
    assert_eq!(f64_at(&report, "/health/publishers_clean_goodbye"), 20.0);
}

#[test]
fn the_baseline_moves_bytes_over_raw_quinn() {
    let output = loadgen()
        .args(["baseline", "--connections", "2", "--duration", "1s", "--warmup", "200ms", "--json", "--quiet"])
        .output()
        .expect("running metaserve-loadgen");
    let report = json(&output);
    let text = report.to_string();
    assert!(text.contains("stream_bytes_per_s"), "{report:#}");
    let mut rates = Vec::new();
    collect(&report, "udp_bytes_per_s", &mut rates);
    assert_eq!(rates.len(), 2, "one stream, then parallel connections: {report:#}");
    assert!(rates.iter().all(|&r| r > 1e6), "raw quinn on loopback moves more than 1 MB/s: {rates:?}");
}

fn collect(v: &serde_json::Value, key: &str, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == key {
                    out.extend(child.as_f64());
                }
                collect(child, key, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|c| collect(c, key, out)),
        _ => {}
    }
}
