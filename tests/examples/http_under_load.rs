//! Does heavy use of the operator HTTP API disturb the QUIC path? The load
//! of the "Survive a hostile Internet" finding: P publishers (5,000)
//! heartbeating once a second with a blob that changes every beat (so the
//! namespace's list of ~3 MB changes every fraction of a millisecond), one
//! browser, and, in every other phase, C HTTP clients (16, one connection
//! each) downloading that list in a loop as fast as they can. Per phase it
//! reports heartbeats applied per second
//! (`metaserve_heartbeats_accepted_total{outcome="applied"}`), publishers
//! expired (`metaserve_connections_closed_total{code="HEARTBEAT_TIMEOUT"}`),
//! the browser's batch inter-arrival against the 1 s update interval, the
//! downloads, list serializations and the daemon's CPU.
//!
//! The HTTP clients run on a runtime of their own in this process, as the
//! daemon's HTTP server does in its own, so that they do not starve this
//! process's publishers and browser (which would measure the load generator,
//! not the daemon). Bounded: about 2 minutes at the defaults.
//!
//! ```sh
//! cargo build --release -p metaserve-daemon -p metaserve-tests --examples
//! ./target/release/examples/http_under_load [publishers] [http clients] [seconds per phase] [phases]
//! ```
//!
//! `METASERVE_DAEMON=<binary>` runs another daemon build (given no flag it
//! does not know: only `--http`); `METASERVE_DAEMON_LOG=<file>` keeps the
//! daemon's log (`METASERVE_TEST_LOG` sets its filter, e.g.
//! `info,metaserve_daemon=debug` for the time of each list serialization).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_tests::{metric, Daemon};
use metaserve_tokio::{browse, BrowseOptions, BrowserEvent, PublishOptions};
use tokio::time::{Instant, MissedTickBehavior};

const NAMESPACE: &str = "bench";
/// Publishers per client endpoint (one UDP socket, one address): the
/// daemon's default per-IP publisher limit.
const PER_ENDPOINT: usize = 16;
/// Blob bytes: about 640 bytes of JSON per entry, 3.1 MB per 5,000-entry list.
const BLOB: usize = 190;
const PERIOD: Duration = Duration::from_secs(1);
const UPDATE_INTERVAL: Duration = Duration::from_secs(1);

/// Client endpoint `k`: `127.1.x.y`, distinct per endpoint and per /24
/// every 254 endpoints, as the load generator does.
fn endpoint_ip(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (k / 254) as u8, (k % 254 + 1) as u8))
}

/// What the HTTP clients did in one phase.
#[derive(Default)]
struct Downloads {
    latencies: Mutex<Vec<Duration>>,
    bytes: AtomicU64,
    failed: AtomicU64,
}

async fn scrape(client: &reqwest::Client, daemon: &Daemon) -> String {
    client.get(daemon.http_url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The counters a phase is measured by.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    applied: f64,
    expired: f64,
    builds: f64,
    cpu: Duration,
}

async fn read(client: &reqwest::Client, daemon: &Daemon) -> Reading {
    let text = scrape(client, daemon).await;
    Reading {
        at: Instant::now(),
        applied: metric(&text, "metaserve_heartbeats_accepted_total", &[("outcome", "applied")]).unwrap_or(0.0),
        expired: metric(&text, "metaserve_connections_closed_total", &[("code", "HEARTBEAT_TIMEOUT")]).unwrap_or(0.0),
        // Absent from daemons without the list cache.
        builds: metric(&text, "metaserve_http_list_builds_total", &[]).unwrap_or(f64::NAN),
        cpu: daemon.cpu_time(),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let publishers: usize = args.next().map_or(5000, |a| a.parse().expect("publishers"));
    let clients: usize = args.next().map_or(16, |a| a.parse().expect("http clients"));
    let phase = Duration::from_secs(args.next().map_or(15, |a| a.parse().expect("seconds per phase")));
    let phases: usize = args.next().map_or(6, |a| a.parse().expect("phases"));
    let quic = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let http = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("downloaders")
        .enable_all()
        .build()
        .unwrap();
    quic.block_on(run(publishers, clients, phase, phases, http.handle().clone()));
    http.shutdown_background();
}

async fn run(publishers: usize, clients: usize, phase: Duration, phases: usize, http: tokio::runtime::Handle) {
    let daemon = Daemon::start(&["--http", "127.0.0.1:0"]).await;
    let client_config = metaserve_tokio::tls::client_config_pinned(daemon.fingerprint()).unwrap();
    let server = daemon.addr();
    let endpoints: Vec<_> = (0..publishers.div_ceil(PER_ENDPOINT))
        .map(|k| metaserve_tokio::client_endpoint(SocketAddr::new(endpoint_ip(k), 0), client_config.clone()).unwrap())
        .collect();

    // Publishers: the first beat at connect, then one a period, spread evenly.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let connected = Instant::now();
    let mut connecting = futures_util::stream::iter(0..publishers)
        .map(|i| {
            let endpoint = endpoints[i / PER_ENDPOINT].clone();
            async move { (i, endpoint.connect(server, "localhost").unwrap().await) }
        })
        .buffer_unordered(32);
    let mut connections = Vec::new();
    while let Some((i, connection)) = connecting.next().await {
        let connection = connection.unwrap_or_else(|e| panic!("publisher {i}: {e}"));
        let options = PublishOptions {
            declared_port: Some(20_000 + (i % PER_ENDPOINT) as u16),
            ..PublishOptions::new(NAMESPACE)
        };
        let first = start + PERIOD.mul_f64(i as f64 / publishers as f64);
        let mut tick = tokio::time::interval_at(first.max(Instant::now()), PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let stopping = stop.clone();
        let beats = futures_util::stream::unfold((tick, 0u64), move |(mut tick, seq)| {
            let stopping = stopping.clone();
            async move {
                tick.tick().await;
                if stopping.load(Ordering::Relaxed) {
                    return None;
                }
                let mut blob = format!("name=bench server {i};map=q3dm17;players={seq};").into_bytes();
                blob.resize(BLOB, b'.');
                Some((Bytes::from(blob), (tick, seq + 1)))
            }
        });
        let (conn, failed, stopped) = (connection.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let outcome = metaserve_tokio::publish(&conn, options, beats).await;
            // Failures at teardown (the endpoints dropped) are not the daemon's.
            if let (Err(e), false) = (outcome, stopped.load(Ordering::Relaxed)) {
                if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("publisher {i} failed: {e}");
                }
            }
        });
        connections.push(connection);
    }
    eprintln!("{publishers} publishers connected in {:.1} s", connected.elapsed().as_secs_f64());

    // One browser; the time of every Synced (the end of a batch).
    let browser_endpoint =
        metaserve_tokio::client_endpoint(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 2, 0, 1)), 0), client_config)
            .unwrap();
    let browser_connection = browser_endpoint.connect(server, "localhost").unwrap().await.unwrap();
    let mut list = browse(&browser_connection, BrowseOptions::new(NAMESPACE)).await.unwrap();
    let synced = Arc::new(Mutex::new(Vec::<(Instant, usize)>::new()));
    let browser = {
        let synced = synced.clone();
        tokio::spawn(async move {
            while let Some(event) = list.next().await {
                match event {
                    Ok(BrowserEvent::Synced { .. }) => {
                        synced.lock().unwrap().push((Instant::now(), list.servers().len()))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("the browser failed: {e}");
                        return;
                    }
                }
            }
        })
    };
    let scraper = reqwest::Client::new();
    let listed = Instant::now();
    while synced.lock().unwrap().last().is_none_or(|(_, n)| *n < publishers) {
        assert!(listed.elapsed() < Duration::from_secs(60), "the browser never listed every publisher");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // steady state

    // The HTTP clients, on their own runtime, downloading while `active`.
    let active = Arc::new(AtomicBool::new(false));
    let downloads = Arc::new(Mutex::new(Arc::new(Downloads::default())));
    let url = daemon.http_url(&format!("/v1/namespaces/{NAMESPACE}/servers"));
    for _ in 0..clients {
        let (active, stop, downloads, url) = (active.clone(), stop.clone(), downloads.clone(), url.clone());
        http.spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                if !active.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let tally = downloads.lock().unwrap().clone();
                let started = Instant::now();
                let mut bytes = 0;
                let ok = match client.get(&url).send().await {
                    Ok(mut response) => loop {
                        match response.chunk().await {
                            Ok(Some(chunk)) => bytes += chunk.len(),
                            Ok(None) => break response.status().is_success(),
                            Err(_) => break false,
                        }
                    },
                    Err(_) => false,
                };
                if ok {
                    tally.latencies.lock().unwrap().push(started.elapsed());
                    tally.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    println!(
        "| phase | HTTP clients | applied heartbeats/s | publishers expired | browser batch gap: mean / p99 / max \
         | downloads/s (MB/s) | download p50 / max | list builds/s | daemon CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut gaps: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut expired = [0.0; 2];
    let first_reading = read(&scraper, &daemon).await;
    for round in 0..phases {
        let loaded = round % 2 == 1;
        let tally = Arc::new(Downloads::default());
        *downloads.lock().unwrap() = tally.clone();
        active.store(loaded, Ordering::Relaxed);
        let before = read(&scraper, &daemon).await;
        tokio::time::sleep(phase).await;
        let after = read(&scraper, &daemon).await;
        let secs = (after.at - before.at).as_secs_f64();
        let applied = (after.applied - before.applied) / secs;
        let batch_gaps: Vec<Duration> = {
            let synced = synced.lock().unwrap();
            let times: Vec<Instant> =
                synced.iter().map(|(t, _)| *t).filter(|t| *t >= before.at && *t <= after.at).collect();
            times.windows(2).map(|w| w[1] - w[0]).collect()
        };
        let mut sorted = batch_gaps.clone();
        sorted.sort_unstable();
        let mean = sorted.iter().sum::<Duration>().checked_div(sorted.len() as u32).unwrap_or_default();
        let mut latencies = tally.latencies.lock().unwrap().clone();
        latencies.sort_unstable();
        let kind = usize::from(loaded);
        gaps[kind].extend(batch_gaps);
        rates[kind].push(applied);
        expired[kind] += after.expired - before.expired;
        println!(
            "| {round} | {} | {applied:.0} | {} | {} / {} / {} | {:.1} ({:.0}) | {} / {} | {:.2} | {:.0} % |",
            if loaded { clients } else { 0 },
            after.expired - before.expired,
            ms(mean),
            ms(quantile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
            latencies.len() as f64 / secs,
            tally.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs,
            ms(quantile(&latencies, 0.5)),
            ms(latencies.last().copied().unwrap_or_default()),
            (after.builds - before.builds) / secs,
            100.0 * (after.cpu - before.cpu).as_secs_f64() / secs,
        );
        let failed_downloads = tally.failed.load(Ordering::Relaxed);
        if failed_downloads > 0 {
            eprintln!("phase {round}: {failed_downloads} downloads failed");
        }
    }
    let last_reading = read(&scraper, &daemon).await;
    active.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    println!();
    for (kind, name) in [(0, "without HTTP"), (1, "with HTTP")] {
        let mut sorted = gaps[kind].clone();
        sorted.sort_unstable();
        let mean_rate = rates[kind].iter().sum::<f64>() / rates[kind].len().max(1) as f64;
        println!(
            "{name}: {mean_rate:.0} applied heartbeats/s, {} expired, batch gap p99 {} max {} ({} gaps; update interval {})",
            expired[kind],
            ms(quantile(&sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
            sorted.len(),
            ms(UPDATE_INTERVAL),
        );
    }
    println!(
        "over the run: {} publishers expired, {} publish calls failed, daemon CPU {:.1} s, peak RSS {} MiB",
        last_reading.expired - first_reading.expired,
        failed.load(Ordering::Relaxed),
        (last_reading.cpu - first_reading.cpu).as_secs_f64(),
        daemon.peak_rss_kib() / 1024
    );
    if let Some(path) = std::env::var_os("METASERVE_DAEMON_LOG") {
        std::fs::write(&path, daemon.log()).expect("cannot write the daemon's log");
    }
    browser.abort();
    drop(connections);
}
