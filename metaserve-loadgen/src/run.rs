//! `run`: start (or find) the daemon, connect the clients, warm up, measure
//! one window, tear down, report.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use metaserve_tokio::tls;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cli::RunArgs;
use crate::daemon::{self, ManagedDaemon, Target};
use crate::procfs::{self, Proc, Sample};
use crate::report::{self, Amount, Health, ProcReport, Progress, RunConfig, RunReport};
use crate::stats::{LatencySummary, Live};
use crate::{baseline, browsers, publishers};

/// How long publishers and browsers get to end their sessions.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// After the window, beyond two update intervals, for the deliveries of the
/// heartbeats sent at its end.
const GRACE_MARGIN: Duration = Duration::from_millis(500);

/// A duration as the daemon's flags take it.
fn flag_duration(d: Duration) -> String {
    format!("{}us", d.as_micros().max(1))
}

/// The flags given to a daemon started here: the run's intervals, and
/// per-IP limits that admit one endpoint's clients (each endpoint has its
/// own loopback address). Flags the user passes with --daemon-arg win.
fn daemon_flags(args: &RunArgs, update_interval: Duration, heartbeat_interval: Duration) -> Vec<String> {
    let user_sets = |flag: &str| {
        args.daemon_arg.iter().any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
    };
    let mut flags = Vec::new();
    let mut set = |flag: &str, value: String| {
        if !user_sets(flag) {
            flags.push(flag.to_owned());
            flags.push(value);
        }
    };
    set("--update-interval", flag_duration(update_interval));
    set("--heartbeat-interval", flag_duration(heartbeat_interval));
    set("--max-publishers-per-ip", args.publishers_per_endpoint.max(16).to_string());
    set("--max-browsers-per-ip", args.browsers_per_endpoint.max(64).to_string());
    // Every endpoint is one simulated host, and all of them share loopback's
    // networks: let a host's whole setup burst in, and any number of hosts.
    let per_host = args.publishers_per_endpoint.max(args.browsers_per_endpoint).max(64).to_string();
    set("--max-handshakes-per-ip", per_host.clone());
    set("--max-connecting-per-ip", per_host);
    set("--max-handshakes-per-network", "100000".to_owned());
    if args.size > 8 * 1024 {
        set("--max-blob-size", args.size.to_string());
    }
    flags.extend(args.daemon_arg.iter().cloned());
    flags
}

/// Runs the load and returns the report (with `--baseline`, the raw quinn
/// comparison too).
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<RunReport> {
    args.validate()?;
    let progress = Progress::new(args.quiet);
    let update_interval = args.update_interval.unwrap_or(Duration::from_secs(1));
    let heartbeat_interval = args
        .heartbeat_interval
        .unwrap_or_else(|| (args.period() / 2).clamp(Duration::from_millis(1), Duration::from_secs(1)));
    let (daemon, target) = match (args.connect, args.fingerprint) {
        (Some(addr), Some(fingerprint)) => {
            if let Some(pid) = args.pid {
                let name = procfs::command_name(pid).with_context(|| format!("--pid {pid}: no such process"))?;
                if !name.starts_with("metaserve") {
                    eprintln!(
                        "warning: --pid {pid} is {name:?}, not metaserve-daemon: its CPU and memory are measured"
                    );
                }
            }
            (None, Target { addr, fingerprint, pid: args.pid, description: "external".to_owned() })
        }
        _ => {
            let binary = daemon::locate(args.daemon.as_deref())?;
            let flags = daemon_flags(&args, update_interval, heartbeat_interval);
            let (daemon, target) = ManagedDaemon::start(&binary, &flags, &args.daemon_log).await?;
            progress.line(&format!("started {} {} (pid {})", binary.display(), flags.join(" "), daemon_pid(&target)));
            (Some(daemon), target)
        }
    };
    let result = measure(&args, &target, &progress).await;
    if let Some(daemon) = daemon {
        let tail = daemon.log_tail(20);
        match daemon.stop().await {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("warning: the daemon exited with {status}; its log ends with:\n{tail}"),
            Err(e) => eprintln!("warning: stopping the daemon: {e:#}"),
        }
        if result.is_err() && !tail.is_empty() {
            eprintln!("the daemon's log ends with:\n{tail}");
        }
    }
    let mut report = result?;
    if let Some(window) = args.baseline {
        let phase = baseline::parallel_only(args.browsers, Duration::from_secs(1), window, &progress).await?;
        report.fanout_fraction_of_baseline =
            (phase.udp_bytes_per_s > 0.0).then(|| report.fanout_udp_bytes.per_s / phase.udp_bytes_per_s);
        report.baseline = Some(phase);
    }
    Ok(report)
}

fn daemon_pid(target: &Target) -> String {
    target.pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
}

/// Awaits `setup`, printing a status line every second, failing at
/// `deadline`, on Ctrl-C, or as soon as a client fails.
async fn setup_with_status<T>(
    setup: impl Future<Output = anyhow::Result<T>>,
    live: &Live,
    args: &RunArgs,
    deadline: Instant,
    interrupted: &mut (impl Future<Output = std::io::Result<()>> + Unpin),
    progress: &Progress,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let status = || {
        format!(
            "[setup {:>3.0}s] publishers {}/{} connected, {} failed; browsers {}/{} connected, {} with the full list, {} failed",
            started.elapsed().as_secs_f64(),
            live.publishers_connected.load(Ordering::Relaxed),
            args.publishers,
            live.publishers_failed.load(Ordering::Relaxed),
            live.browsers_connected.load(Ordering::Relaxed),
            args.browsers,
            live.browsers_ready.load(Ordering::Relaxed),
            live.browsers_failed.load(Ordering::Relaxed),
        )
    };
    let mut setup = pin!(setup);
    let mut ticker = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            result = &mut setup => {
                progress.line(&status());
                progress.done();
                return result;
            }
            _ = ticker.tick() => {
                progress.line(&status());
                if live.publishers_failed.load(Ordering::Relaxed) + live.browsers_failed.load(Ordering::Relaxed) > 0 {
                    progress.done();
                    bail!("a client failed during setup: {}", live.first_error().unwrap_or_default());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                progress.done();
                bail!(
                    "setup did not finish within {}: {}{}",
                    humantime::format_duration(args.setup_timeout),
                    status(),
                    live.first_error().map(|e| format!("; first error: {e}")).unwrap_or_default()
                );
            }
            _ = &mut *interrupted => {
                progress.done();
                bail!("interrupted during setup");
            }
        }
    }
}

/// Waits until every browser has held every publisher at a Synced.
async fn all_ready(live: &Live, browsers: usize) -> anyhow::Result<()> {
    while live.browsers_ready.load(Ordering::Relaxed) < browsers {
        if live.browsers_failed.load(Ordering::Relaxed) + live.publishers_failed.load(Ordering::Relaxed) > 0 {
            bail!("a client failed during setup: {}", live.first_error().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn proc_report(start: &Sample, end: &Sample, wall: Duration, rss_max_sampled_kib: u64) -> ProcReport {
    let cpu = end.cpu.saturating_sub(start.cpu);
    ProcReport {
        cpu_s: cpu.as_secs_f64(),
        cpu_percent: procfs::percent(cpu, wall),
        rss_start_kib: start.rss_kib,
        rss_kib: end.rss_kib,
        rss_max_sampled_kib: rss_max_sampled_kib.max(end.rss_kib),
        peak_rss_kib: end.hwm_kib,
        threads: end.threads,
    }
}

/// Everything between the daemon's start and its stop.
async fn measure(args: &RunArgs, target: &Target, progress: &Progress) -> anyhow::Result<RunReport> {
    let live = Arc::new(Live::default());
    let client_config = tls::client_config_pinned(target.fingerprint).context("client TLS configuration")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut interrupted = pin!(tokio::signal::ctrl_c());
    let publisher_plan = publishers::Plan {
        count: args.publishers,
        per_endpoint: args.publishers_per_endpoint,
        period: args.period(),
        size: args.size,
        namespace: args.namespace.clone(),
        concurrency: args.connect_concurrency,
    };
    let browser_plan = browsers::Plan {
        count: args.browsers,
        per_endpoint: args.browsers_per_endpoint,
        namespace: args.namespace.clone(),
        publishers: args.publishers,
        size: args.size,
        concurrency: args.connect_concurrency,
    };

    // Setup: connect everyone; ready once every browser lists every publisher.
    let setup_start = Instant::now();
    let setup = async {
        let pubs = publishers::start(&publisher_plan, target.addr, client_config.clone(), &live, &stop_rx).await?;
        let brs = browsers::start(&browser_plan, target.addr, client_config.clone(), &live, &stop_rx).await?;
        all_ready(&live, args.browsers).await?;
        let stalled = browsers::stall(&browser_plan, args.stalled_browsers, target.addr, client_config.clone()).await?;
        anyhow::Ok((pubs, brs, stalled))
    };
    let deadline = setup_start + args.setup_timeout;
    let (pubs, brs, stalled) = setup_with_status(setup, &live, args, deadline, &mut interrupted, progress).await?;
    let setup_s = setup_start.elapsed().as_secs_f64();
    let welcome = live.welcome();
    let update_interval =
        welcome.as_ref().map_or(args.update_interval.unwrap_or(Duration::from_secs(1)), |w| w.update_interval);
    if let Some(w) = &welcome {
        if w.heartbeat_interval > args.period() {
            eprintln!(
                "warning: the daemon's heartbeat interval ({:?}) is longer than the heartbeat period ({:?}): \
                 publishers coalesce beats, and latency includes their wait",
                w.heartbeat_interval,
                args.period()
            );
        }
    }

    // Warm-up: the snapshots and the first batches are behind us.
    let warmup = args.warmup.max(update_interval);
    progress.line(&format!("warming up for {}", humantime::format_duration(warmup)));
    progress.done();
    tokio::time::sleep(warmup).await;

    // The window.
    let daemon_proc = target.pid.map(Proc::Pid);
    let daemon0 = match daemon_proc {
        Some(p) => Some(
            procfs::sample(p)
                .with_context(|| format!("reading /proc/{} (is the daemon running?)", daemon_pid(target)))?,
        ),
        None => None,
    };
    let self0 = procfs::sample(Proc::Myself)?;
    let load_start = procfs::loadavg();
    let (fanout0, ingress0) = (brs.udp_rx_bytes(), pubs.udp_tx_bytes());
    let t0 = Instant::now();
    live.set_measuring(true, crate::blob::now_ns());
    let mut rss_max = daemon0.map_or(0, |s| s.rss_kib);
    let mut self_rss_max = self0.rss_kib;
    let mut last = (0u64, 0u64, 0u64, daemon0, self0, t0);
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut cut_short = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(t0 + args.duration) => break,
            _ = &mut interrupted => {
                cut_short = true;
                break;
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                let secs = (now - last.5).as_secs_f64().max(1e-9);
                let sent = live.heartbeats.load(Ordering::Relaxed);
                let delivered = live.delivered.load(Ordering::Relaxed);
                let bytes = live.delivered_bytes.load(Ordering::Relaxed);
                let latency = LatencySummary::of(&live.take_latencies());
                let daemon_now = daemon_proc.and_then(|p| procfs::sample(p).ok());
                let self_now = procfs::sample(Proc::Myself).ok();
                let cpu = |a: Option<Sample>, b: Option<Sample>| match (a, b) {
                    (Some(a), Some(b)) => format!("{:.0}%", procfs::percent(b.cpu.saturating_sub(a.cpu), now - last.5)),
                    _ => "?".to_owned(),
                };
                let daemon_text = match daemon_now {
                    Some(d) => {
                        rss_max = rss_max.max(d.rss_kib);
                        format!("daemon {} {}", cpu(last.3, daemon_now), report::bytes(d.rss_kib as f64 * 1024.0))
                    }
                    None => "daemon ?".to_owned(),
                };
                if let Some(s) = self_now {
                    self_rss_max = self_rss_max.max(s.rss_kib);
                }
                progress.line(&format!(
                    "[{:>4.0}s/{:.0}s] sent {:.0}/s  delivered {:.0}/s  {}/s  latency {}  {}  loadgen {}",
                    (now - t0).as_secs_f64(),
                    args.duration.as_secs_f64(),
                    (sent - last.0) as f64 / secs,
                    (delivered - last.1) as f64 / secs,
                    report::bytes((bytes - last.2) as f64 / secs),
                    if latency.samples == 0 {
                        "-".to_owned()
                    } else {
                        format!("p50 {:.0} ms p99 {:.0} ms max {:.0} ms", latency.p50_ms, latency.p99_ms, latency.max_ms)
                    },
                    daemon_text,
                    cpu(Some(last.4), self_now),
                ));
                last = (sent, delivered, bytes, daemon_now.or(last.3), self_now.unwrap_or(last.4), now);
                if live.browsers_failed.load(Ordering::Relaxed) >= args.browsers {
                    cut_short = true;
                    break;
                }
            }
        }
    }
    live.set_measuring(false, crate::blob::now_ns());
    let wall = t0.elapsed();
    let daemon1 = daemon_proc.and_then(|p| procfs::sample(p).ok());
    let self1 = procfs::sample(Proc::Myself)?;
    let (fanout1, ingress1) = (brs.udp_rx_bytes(), pubs.udp_tx_bytes());
    let load_end = procfs::loadavg();
    progress.done();

    // Heartbeats sent in the window's last interval are still on their way:
    // they count when they arrive (deliveries count by send time).
    if !cut_short {
        let grace = update_interval * 2 + GRACE_MARGIN;
        progress.line(&format!(
            "collecting the deliveries of the window's last heartbeats ({})",
            humantime::format_duration(grace)
        ));
        progress.done();
        tokio::time::sleep(grace).await;
    }

    // Teardown: publishers say Goodbye, browsers close.
    let publisher_endpoints = pubs.endpoint_count();
    let browser_endpoints = brs.endpoint_count();
    let _ = stop_tx.send(true);
    progress.line("stopping clients");
    progress.done();
    let ending = pubs.finish(TEARDOWN_TIMEOUT).await;
    stalled.close().await;
    let (tally, browsers_hung) = brs.finish(TEARDOWN_TIMEOUT).await;

    let secs = wall.as_secs_f64();
    let heartbeats = Amount::over(live.heartbeats.load(Ordering::Relaxed), secs);
    let delivered = Amount::over(tally.upserts, secs);
    // Each browser gets at most one update per publisher per update interval.
    let per_publisher_cap = args.publishers as f64 / update_interval.as_secs_f64();
    let expected_per_s = args.browsers as f64 * heartbeats.per_s.min(per_publisher_cap);
    let daemon = match (daemon0, daemon1) {
        (Some(a), Some(b)) => Some(proc_report(&a, &b, wall, rss_max)),
        _ => None,
    };
    if daemon_proc.is_some() && daemon.is_none() {
        live.error("the daemon's /proc entry vanished during the window".to_owned());
    }
    Ok(RunReport {
        config: RunConfig {
            publishers: args.publishers,
            browsers: args.browsers,
            stalled_browsers: args.stalled_browsers,
            rate_hz: args.rate,
            size_bytes: args.size,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: warmup.as_secs_f64(),
            namespace: args.namespace.clone(),
            update_interval_s: welcome.as_ref().map(|w| w.update_interval.as_secs_f64()),
            heartbeat_interval_s: welcome.as_ref().map(|w| w.heartbeat_interval.as_secs_f64()),
            publisher_endpoints,
            browser_endpoints,
            daemon: target.description.clone(),
            daemon_addr: target.addr.to_string(),
            daemon_pid: target.pid,
        },
        setup_s,
        window_s: secs,
        heartbeats,
        delivered,
        expected_per_s,
        delivery_ratio: if expected_per_s > 0.0 { delivered.per_s / expected_per_s } else { 0.0 },
        coalesced: tally.coalesced,
        blob_bytes: Amount::over(tally.blob_bytes, secs),
        fanout_udp_bytes: Amount::over(fanout1.saturating_sub(fanout0), secs),
        ingress_udp_bytes: Amount::over(ingress1.saturating_sub(ingress0), secs),
        latency: LatencySummary::of(&tally.latency),
        batch_floor: LatencySummary::of(&tally.batch_floor),
        batch_span: LatencySummary::of(&tally.batch_span),
        daemon,
        loadgen: proc_report(&self0, &self1, wall, self_rss_max),
        load_average_start: load_start,
        load_average_end: load_end,
        health: Health {
            publishers_failed: ending.failed,
            publishers_clean_goodbye: ending.clean,
            publishers_hung: ending.hung,
            browsers_failed: live.browsers_failed.load(Ordering::Relaxed),
            browsers_hung,
            removes_in_window: tally.removes,
            resets: tally.resets,
            first_error: live.first_error().or(tally.error),
            interrupted: cut_short,
        },
        baseline: None,
        fanout_fraction_of_baseline: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["lg", "run"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(run) => *run,
            crate::cli::Command::Baseline(_) => unreachable!(),
        }
    }

    #[test]
    fn daemon_flags_admit_the_clients_and_yield_to_the_user() {
        let a = args(&["--publishers-per-endpoint", "500", "--size", "10000"]);
        let flags = daemon_flags(&a, Duration::from_secs(1), Duration::from_millis(500));
        let joined = flags.join(" ");
        assert!(joined.contains("--update-interval 1000000us"), "{joined}");
        assert!(joined.contains("--heartbeat-interval 500000us"), "{joined}");
        assert!(joined.contains("--max-publishers-per-ip 500"), "{joined}");
        assert!(joined.contains("--max-browsers-per-ip 64"), "{joined}");
        assert!(joined.contains("--max-handshakes-per-ip 500"), "{joined}");
        assert!(joined.contains("--max-connecting-per-ip 500"), "{joined}");
        assert!(joined.contains("--max-blob-size 10000"), "{joined}");

        let a = args(&["--daemon-arg=--update-interval=250ms", "--daemon-arg", "--entry-ttl=60s"]);
        let flags = daemon_flags(&a, Duration::from_secs(1), Duration::from_millis(500));
        assert_eq!(flags.iter().filter(|f| f.starts_with("--update-interval")).count(), 1, "{flags:?}");
        assert!(flags.contains(&"--update-interval=250ms".to_owned()));
        assert!(flags.contains(&"--entry-ttl=60s".to_owned()));
        assert!(!flags.iter().any(|f| f == "--max-blob-size"));
    }
}
