//! Does the operator HTTP surface slow down the QUIC path? Runs N
//! publishers heartbeating as fast as QUIC flow control allows (raw
//! Heartbeat frames, each with a new blob, written in batches: the server
//! applies every heartbeat it receives) against a real daemon with a 1 ms
//! heartbeat interval, and counts applied heartbeats per second
//! (`metaserve_heartbeats_accepted_total{outcome="applied"}`), alternating
//! phases without and with an HTTP client polling `/metrics` and the
//! namespace's JSON list 10 times a second. Bounded: about 65 s.
//!
//! ```sh
//! cargo build --release -p metaserve-daemon
//! cargo run --release -p metaserve-tests --example http_overhead -- [publishers] [seconds per phase]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaserve_proto::frame::{Frame, Role};
use metaserve_tests::{encode, hello, Daemon, RawClient};

const NAMESPACE: &str = "bench";
const PER_HOST: usize = 16;

async fn applied(client: &reqwest::Client, daemon: &Daemon) -> u64 {
    let text = client.get(daemon.http_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("metaserve_heartbeats_accepted_total{outcome=\"applied\"} "))
        .expect("the applied-heartbeats counter")
        .trim()
        .parse()
        .unwrap()
}

#[derive(Default)]
struct Poller {
    polls: AtomicU64,
    bytes: AtomicU64,
    max_latency_us: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let publishers: usize = args.next().map_or(64, |a| a.parse().expect("publishers"));
    let phase = Duration::from_secs(args.next().map_or(10, |a| a.parse().expect("seconds per phase")));
    let daemon = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "1ms",
        "--update-interval",
        "100ms",
        "--max-publishers-per-ip",
        &PER_HOST.to_string(),
    ])
    .await;
    let hosts: Vec<_> = (0..publishers.div_ceil(PER_HOST)).map(|h| daemon.endpoint(2 + h as u8)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut feeders = Vec::new();
    for i in 0..publishers {
        let mut publisher = RawClient::connect(&daemon, &hosts[i / PER_HOST]).await;
        publisher.send(&hello(Role::Publisher, NAMESPACE, b"")).await;
        let stop = stop.clone();
        // Batches of 32 heartbeats, each blob different, so every one
        // changes the entry; write_all waits while flow control says so.
        feeders.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut batch = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                batch.clear();
                for _ in 0..32 {
                    n += 1;
                    let blob = format!("name=bench {i};map=q3dm17;players={n}");
                    batch.extend_from_slice(&encode(&Frame::Heartbeat { blob: blob.as_bytes() }));
                }
                if publisher.send.write_all(&batch).await.is_err() {
                    break;
                }
            }
            drop(publisher);
        }));
    }
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(3)).await; // warm-up

    let poller = Arc::new(Poller::default());
    let polling = Arc::new(AtomicBool::new(false));
    let poll_task = {
        let (poller, polling, stop) = (poller.clone(), polling.clone(), stop.clone());
        let urls = [daemon.http_url("/metrics"), daemon.http_url(&format!("/v1/namespaces/{NAMESPACE}/servers"))];
        let client = client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if !polling.load(Ordering::Relaxed) {
                    continue;
                }
                for url in &urls {
                    let start = Instant::now();
                    let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
                    let us = start.elapsed().as_micros() as u64;
                    poller.max_latency_us.fetch_max(us, Ordering::Relaxed);
                    poller.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    poller.polls.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let cpu_before = daemon.cpu_time();
    let mut cpu = [Duration::ZERO; 2];
    let mut beats = [0u64; 2];
    for round in 0..6 {
        let polled = round % 2 == 1;
        polling.store(polled, Ordering::Relaxed);
        let (start, before, cpu_start) = (Instant::now(), applied(&client, &daemon).await, daemon.cpu_time());
        tokio::time::sleep(phase).await;
        let (after, cpu_end) = (applied(&client, &daemon).await, daemon.cpu_time());
        let rate = (after - before) as f64 / start.elapsed().as_secs_f64();
        cpu[usize::from(polled)] += cpu_end - cpu_start;
        beats[usize::from(polled)] += after - before;
        println!("phase {round}: {} {rate:.0} heartbeats/s", if polled { "polled" } else { "idle  " });
        rates[usize::from(polled)].push(rate);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poll_task.await;
    for feeder in feeders {
        let _ = feeder.await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (idle, polled) = (mean(&rates[0]), mean(&rates[1]));
    let polls = poller.polls.load(Ordering::Relaxed);
    println!();
    println!(
        "| publishers | HTTP poller | applied heartbeats/s (mean of 3 × {}s) | daemon CPU | daemon CPU per 1M heartbeats |",
        phase.as_secs()
    );
    println!("|---|---|---|---|---|");
    let secs = 3.0 * phase.as_secs_f64();
    let per_million = |i: usize| cpu[i].as_secs_f64() * 1e6 / beats[i].max(1) as f64;
    println!(
        "| {publishers} | none | {idle:.0} | {:.0} % | {:.3} s |",
        100.0 * cpu[0].as_secs_f64() / secs,
        per_million(0)
    );
    println!(
        "| {publishers} | 10 Hz /metrics + JSON list | {polled:.0} | {:.0} % | {:.3} s |",
        100.0 * cpu[1].as_secs_f64() / secs,
        per_million(1)
    );
    println!();
    println!("ratio polled / idle: {:.3}", polled / idle);
    println!(
        "HTTP: {polls} requests, {:.0} KiB per JSON list + metrics pair on average, slowest {:.1} ms",
        poller.bytes.load(Ordering::Relaxed) as f64 / 1024.0 / (polls.max(1) as f64 / 2.0),
        poller.max_latency_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!("daemon CPU over the run: {:?}", daemon.cpu_time() - cpu_before);
}
