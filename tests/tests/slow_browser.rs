//! Browsers that never read cost the daemon O(1) memory: 500 publishers
//! change their heartbeats every 200 ms for 20 s while several browsers
//! never read; the daemon's RSS stays bounded and reading browsers keep
//! receiving updates.
//!
//! Without the revision log, a server queueing every change for a stalled
//! browser would hold 500 × 5 beats/s × 20 s × ~220 bytes ≈ 11 MB per
//! stalled browser (44 MB for the four here), growing without end; with
//! it, a stalled browser costs its cursor plus what QUIC flow control lets
//! sit in the connection's send buffer (bounded by the transport config).

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_proto::frame::{FrameType, Role};
use metaserve_tests::{hello, start_browser, wait_synced, within, Daemon, RawClient, WAIT};
use metaserve_tokio::{publish, Browse, BrowserEvent, PublishOptions};
use tokio::sync::watch;
use tokio::task::JoinSet;

const PUBLISHERS: usize = 500;
/// 127.0.0.10 ..= 127.0.0.13, one client endpoint each carrying 125
/// publisher connections told apart by their declared game ports.
const PUBLISHER_HOSTS: usize = 4;
const BLOB_LEN: usize = 200;
const BEAT: Duration = Duration::from_millis(200);
const RUN: Duration = Duration::from_secs(20);

/// The bound on the daemon's RSS growth between "everyone connected" and
/// the end of the 20 s run: 32 MiB.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;

/// Blob `beat=NNNNNN;pub=III;` padded to 200 bytes, different every beat.
fn blob(publisher: usize, beat: u64) -> Bytes {
    let mut text = format!("beat={beat:06};pub={publisher:03};").into_bytes();
    text.resize(BLOB_LEN, b'#');
    Bytes::from(text)
}

fn beat_of(blob: &[u8]) -> u64 {
    std::str::from_utf8(&blob[5..11]).unwrap().parse().unwrap()
}

fn all_at_beat(list: &Browse, beat: u64) -> bool {
    list.servers().len() == PUBLISHERS && list.servers().all(|s| beat_of(&s.blob) == beat)
}

/// What a reading browser saw during the run.
#[derive(Debug, Default)]
struct Reading {
    batches: usize,
    upserts: usize,
    longest_gap: Duration,
}

/// Reads `list` until `stop` flips, recording batches and the longest
/// time between two batches.
async fn read_until_stopped(mut list: Browse, mut stop: watch::Receiver<bool>) -> (Browse, Reading) {
    let mut reading = Reading::default();
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = list.next() => match event {
                Some(Ok(BrowserEvent::Synced { .. })) => {
                    reading.batches += 1;
                    reading.longest_gap = reading.longest_gap.max(last.elapsed());
                    last = Instant::now();
                }
                Some(Ok(BrowserEvent::Upsert(_))) => reading.upserts += 1,
                Some(Ok(other)) => panic!("unexpected {other:?} for a reading browser"),
                Some(Err(e)) => panic!("reading browser failed: {e}"),
                None => panic!("reading browser ended"),
            },
        }
    }
    reading.longest_gap = reading.longest_gap.max(last.elapsed());
    (list, reading)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_browsers_cost_bounded_memory_under_load() {
    let daemon = Daemon::start(&[
        "--heartbeat-interval",
        "200ms",
        "--update-interval",
        "200ms",
        "--max-publishers-per-ip",
        "125",
        // Each host connects its 125 publishers at once.
        "--max-handshakes-per-ip",
        "125",
        "--max-connecting-per-ip",
        "125",
    ])
    .await;

    // 500 publishers, fed by one beat counter.
    let (beat_tx, beat_rx) = watch::channel(0u64);
    let endpoints: Vec<_> = (0..PUBLISHER_HOSTS).map(|h| daemon.endpoint(10 + h as u8)).collect();
    let daemon = Arc::new(daemon);
    let connections: Vec<quinn::Connection> = within(
        "500 publisher connections",
        Duration::from_secs(60),
        futures_util::stream::iter(0..PUBLISHERS)
            .map(|i| {
                let (daemon, endpoint) = (daemon.clone(), endpoints[i % PUBLISHER_HOSTS].clone());
                async move { daemon.connect(&endpoint).await }
            })
            .buffered(16)
            .collect(),
    )
    .await;
    let mut publishers = JoinSet::new();
    for (i, connection) in connections.into_iter().enumerate() {
        let mut options = PublishOptions::new("busy");
        options.declared_port = Some(20_000 + i as u16);
        let heartbeats = futures_util::stream::unfold((beat_rx.clone(), true), move |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let beat = *rx.borrow_and_update();
            Some((blob(i, beat), (rx, false)))
        });
        publishers.spawn(async move {
            let result = publish(&connection, options, heartbeats).await;
            (i, result)
        });
    }

    // Two reading browsers, and four that never read: two real browses
    // never polled after their Welcome, two raw clients that say Hello and
    // never read at all.
    let reader_endpoint = daemon.endpoint(20);
    let stalled_endpoint = daemon.endpoint(21);
    let (_r1, mut reader1) = start_browser(&daemon, &reader_endpoint, "busy").await;
    let (_r2, mut reader2) = start_browser(&daemon, &reader_endpoint, "busy").await;
    let (_s1, mut stalled) = start_browser(&daemon, &stalled_endpoint, "busy").await;
    let (_s2, _stalled2) = start_browser(&daemon, &stalled_endpoint, "busy").await;
    let mut raw_stalled = Vec::new();
    for _ in 0..2 {
        let mut raw = RawClient::connect(&daemon, &stalled_endpoint).await;
        raw.send(&hello(Role::Browser, "busy", b"")).await;
        raw_stalled.push(raw);
    }
    for list in [&mut reader1, &mut reader2] {
        wait_synced(list, "all 500 publishers listed", |l| all_at_beat(l, 0)).await;
    }

    let rss_start = daemon.rss_kib();
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = [
        tokio::spawn(read_until_stopped(reader1, stop_rx.clone())),
        tokio::spawn(read_until_stopped(reader2, stop_rx.clone())),
    ];
    let started = Instant::now();
    let mut beat = 0;
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(BEAT);
    while started.elapsed() < RUN {
        ticker.tick().await;
        beat += 1;
        beat_tx.send_replace(beat);
        if beat % 25 == 0 {
            samples.push((started.elapsed().as_secs(), daemon.rss_kib()));
        }
        if let Some(Ok((i, result))) = publishers.try_join_next() {
            panic!("publisher {i} ended during the run: {result:?}");
        }
    }
    let rss_end = daemon.rss_kib();
    let growth = rss_end.saturating_sub(rss_start);
    println!(
        "daemon RSS with {PUBLISHERS} publishers, 2 reading and 4 stalled browsers: \
         {rss_start} KiB after connect, {rss_end} KiB after {beat} beats in {:?} \
         (growth {growth} KiB, limit {RSS_GROWTH_LIMIT_KIB} KiB); samples (s, KiB): {samples:?}",
        started.elapsed()
    );

    stop_tx.send_replace(true);
    let mut readings = Vec::new();
    for reader in readers {
        let (list, reading) = within("reader task", WAIT, reader).await.unwrap();
        println!("reading browser: {reading:?}");
        readings.push((list, reading));
    }

    // Reading browsers kept receiving updates throughout the run...
    for (_, reading) in &readings {
        assert!(reading.batches >= 10, "only {} batches in {RUN:?}: {reading:?}", reading.batches);
        assert!(reading.upserts >= PUBLISHERS * 10, "too few upserts: {reading:?}");
        assert!(reading.longest_gap < Duration::from_secs(5), "updates stalled: {reading:?}");
    }
    // ...and reach the newest beat of every publisher once it stops.
    for (list, _) in &mut readings {
        wait_synced(list, "reading browser at the final beat", |l| all_at_beat(l, beat)).await;
    }
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "daemon RSS grew by {growth} KiB (from {rss_start} to {rss_end}) with stalled browsers"
    );

    // A stalled browser that starts reading catches up with the newest
    // state, coalesced: it never sees the beats it slept through one by one.
    let caught_up = Instant::now();
    let mut upserts = 0usize;
    within("the stalled browser catching up", WAIT, async {
        loop {
            match stalled.next().await {
                Some(Ok(BrowserEvent::Upsert(_))) => upserts += 1,
                Some(Ok(BrowserEvent::Synced { .. })) if all_at_beat(&stalled, beat) => break,
                Some(Ok(_)) => {}
                other => panic!("stalled browser: {other:?}"),
            }
        }
    })
    .await;
    println!(
        "stalled browser caught up in {:?} with {upserts} upserts (the run produced {} changes)",
        caught_up.elapsed(),
        PUBLISHERS as u64 * beat
    );
    assert!((upserts as u64) < PUBLISHERS as u64 * beat / 2, "{upserts} upserts: not coalesced");
    // The raw stalled browsers are still connected, and still get data when they read.
    for raw in &mut raw_stalled {
        assert!(raw.connection.close_reason().is_none(), "a stalled browser was disconnected");
        raw.read_until(FrameType::SYNCED).await;
    }
    assert!(daemon.rss_kib() > 0);
    publishers.abort_all();
}
