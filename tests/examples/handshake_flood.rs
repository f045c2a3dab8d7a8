//! What a flood of connection attempts costs the daemon and everyone else:
//! valid QUIC Initial packets (a fresh ClientHello each, from `hosts`
//! loopback addresses) sent at `rate` per second for `seconds` and never
//! continued, while a bystander publisher changes its blob every 100 ms and
//! a bystander browser counts the versions it receives. Reports the daemon's
//! RSS before and at its peak, its CPU time, how the attempts were decided
//! (from /metrics), and the bystander's batches and gaps. Bounded by
//! `seconds` plus a few seconds. Making a ClientHello costs the generator
//! about 70 µs, so one generator thread tops out near 14,000 attempts a
//! second; give it more threads for higher rates.
//!
//! ```sh
//! cargo build --release -p metaserve-daemon
//! cargo run --release -p metaserve-tests --example handshake_flood -- [rate] [seconds] [hosts] [threads]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use metaserve_tests::{host, start_browser, Daemon, TestPublisher};
use metaserve_tokio::{BrowserEvent, PublishOptions};

async fn metric(client: &reqwest::Client, daemon: &Daemon, line: &str) -> f64 {
    let text = client.get(daemon.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(line)).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(20_000, |a| a.parse().expect("rate"));
    let seconds: u64 = args.next().map_or(30, |a| a.parse().expect("seconds"));
    let hosts: u8 = args.next().map_or(16, |a| a.parse().expect("hosts"));
    let threads: u64 = args.next().map_or(1, |a| a.parse().expect("generator threads"));
    // Heartbeats at 10 Hz, so that every 1 s batch has a change to carry: a
    // batch that does not come is a missed update, not a quiet second.
    let daemon =
        Daemon::start(&["--http", "127.0.0.1:0", "--update-interval", "1s", "--heartbeat-interval", "100ms"]).await;
    let client = reqwest::Client::new();

    let publisher_endpoint = daemon.endpoint(2);
    let publisher = TestPublisher::start(&daemon, &publisher_endpoint, PublishOptions::new("game"), "v0").await;
    let browser_endpoint = daemon.endpoint(3);
    let (_connection, mut list) = start_browser(&daemon, &browser_endpoint, "game").await;
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let (published, stop) = (published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = published.fetch_add(1, Ordering::Relaxed) + 1;
                publisher.set(format!("v{n}")).await;
            }
            publisher
        })
    };
    // The browser records the arrival of each Synced and the newest version.
    let watch = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut batches, mut max_gap, mut last) = (0u64, Duration::ZERO, Instant::now());
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), list.next()).await else { continue };
                if let Ok(BrowserEvent::Synced { .. }) = event {
                    batches += 1;
                    max_gap = max_gap.max(last.elapsed());
                    last = Instant::now();
                }
            }
            (batches, max_gap)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = daemon.rss_kib();
    let cpu_before = daemon.cpu_time();

    let client_config = metaserve_tokio::tls::client_config_pinned(daemon.fingerprint()).unwrap();
    let addr = daemon.addr();
    // Each generator thread has its own client endpoint and sockets, and
    // sends its share of the attempts, paced.
    let flood: Vec<_> = (0..threads)
        .map(|t| {
            let client_config = client_config.clone();
            tokio::task::spawn_blocking(move || {
                let sockets: Vec<UdpSocket> = (0..hosts)
                    .filter(|h| u64::from(*h) % threads == t)
                    .map(|h| UdpSocket::bind(SocketAddr::new(host(100 + h), 0)).unwrap())
                    .collect();
                let mut endpoint =
                    quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, true, None);
                let mut datagram = Vec::new();
                let started = Instant::now();
                let (share, rate) = (rate * seconds / threads, rate / threads);
                let mut sent = 0u64;
                for i in 0..share {
                    // Paced: attempt i leaves at i / rate seconds.
                    let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let now = Instant::now();
                    let (_, mut connection) = endpoint.connect(now, client_config.clone(), addr, "localhost").unwrap();
                    datagram.clear();
                    let transmit = connection.poll_transmit(now, 1, &mut datagram).expect("an Initial");
                    if sockets[i as usize % sockets.len()].send_to(&datagram[..transmit.size], addr).is_ok() {
                        sent += 1;
                    }
                    // Forgotten at once: nothing will ever answer the server.
                }
                (sent, started.elapsed())
            })
        })
        .collect();
    let mut peak_in_progress = 0.0f64;
    while !flood.iter().all(|f| f.is_finished()) {
        let n = metric(&client, &daemon, "metaserve_quic_handshakes_in_progress ").await;
        peak_in_progress = peak_in_progress.max(n);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (mut sent, mut elapsed) = (0, Duration::ZERO);
    for thread in flood {
        let (n, took) = thread.await.unwrap();
        sent += n;
        elapsed = elapsed.max(took);
    }
    let cpu = daemon.cpu_time() - cpu_before;
    let peak = daemon.peak_rss_kib();
    let refused = metric(&client, &daemon, "metaserve_quic_attempts_total{outcome=\"refused\"} ").await;
    let retried = metric(&client, &daemon, "metaserve_quic_attempts_total{outcome=\"retry\"} ").await;
    let timed_out = metric(&client, &daemon, "metaserve_quic_handshakes_timed_out_total ").await;
    let failed = metric(&client, &daemon, "metaserve_handshakes_failed_total ").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let publisher = beats.await.unwrap();
    let (batches, max_gap) = watch.await.unwrap();
    println!("flood: {sent} Initials in {elapsed:?} ({:.0}/s) from {hosts} hosts", sent as f64 / elapsed.as_secs_f64());
    println!(
        "decided: {retried} retried, {refused} refused; accepted handshakes: peak {peak_in_progress} in progress, \
         {failed} failed of which {timed_out} timed out"
    );
    println!(
        "daemon: RSS {rss_before} KiB before, peak {peak} KiB (+{} KiB); CPU {cpu:?} ({:.0} % of one core)",
        peak.saturating_sub(rss_before),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64()
    );
    println!(
        "bystander: {} blobs published, {batches} batches received, longest gap between batches {max_gap:?} \
         (update interval 1 s); publisher still up: {}",
        published.load(Ordering::Relaxed),
        !publisher.is_finished()
    );
}
