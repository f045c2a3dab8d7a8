//! Adversarial clients against the real daemon process, one fresh daemon
//! per case, each case bounded in time:
//!
//! | case | offender | expected code |
//! |---|---|---|
//! | `never_hello` | 200 connections that never say Hello, `--max-handshakes 100` | `HANDSHAKE_TIMEOUT`, or `SERVER_FULL` beyond the limit |
//! | `huge_frame` | frame headers declaring up to 2^62 − 1 payload bytes | `FRAME_TOO_LARGE`, before any payload is buffered |
//! | `tiny_frame_burst` | 10,000 empty unknown frames + 10,000 tiny heartbeats in one write | none: processed; `NO_ERROR` on Goodbye |
//! | `heartbeat_1khz` | a publisher heartbeating at 1 kHz for 3 s | none: coalesced per update interval |
//! | `slow_browsers` | 8 browsers that never read, 2 that read 1 byte/s | none: they stay connected |
//! | `ip_limits` | publishers and browsers beyond the per-IP limits | `IP_LIMIT` |
//! | `silent_publisher` | a publisher that says Hello and never heartbeats | `HEARTBEAT_TIMEOUT` after the entry TTL |
//! | `fin_before_hello` | a session stream finished (FIN) before any Hello | `NO_ERROR` (`session stream finished`), or `PROTOCOL_VIOLATION` when it ends inside the Hello |
//!
//! In every case a reference publisher and browser ([`Bystander`]) are
//! connected throughout, and each of the reference publisher's successive
//! blobs must reach the reference browser during and after the attack;
//! the daemon must stay up (and exit 0 on SIGTERM at the end); its peak RSS
//! (`VmHWM`) must stay within the case's stated bound above its RSS before
//! the attack. Each case prints one line
//! `ADVERSARIAL case=<name> peak_rss_kib=<n> code=<...>` (run with
//! `-- --nocapture` to see them).

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_proto::frame::{Frame, FrameType, Role};
use metaserve_proto::{varint, DecodeError, FrameDecoder};
use metaserve_tests::{
    assert_rejected, close_code, encode, hello, host, listing, start_browser, wait_synced, within, Bystander, Daemon,
    RawClient, TestPublisher, WAIT,
};
use metaserve_tokio::{browse, Browse, BrowseOptions, BrowserEvent, ErrorCode, PublishOptions};
use quinn::Endpoint;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One MiB in KiB, the unit of `/proc/<pid>/status`.
const MIB: u64 = 1024;

/// The short timeouts every case runs with; a case may override some.
const DEFAULT_ARGS: [(&str, &str); 4] = [
    ("--handshake-timeout", "1s"),
    ("--entry-ttl", "2s"),
    ("--update-interval", "200ms"),
    ("--heartbeat-interval", "100ms"),
];

/// One adversarial case: a fresh daemon and its reference publisher and browser.
struct Case {
    name: &'static str,
    daemon: Daemon,
    bystander: Bystander,
    /// The daemon's RSS once the bystander is listed, before the attack.
    baseline_kib: u64,
}

impl Case {
    /// Starts a daemon with [`DEFAULT_ARGS`], overridden or extended by
    /// `overrides`, and a bystander (publisher on 127.0.0.2, browser on
    /// 127.0.0.3) in namespace `game`.
    async fn start(name: &'static str, overrides: &[(&str, &str)]) -> Case {
        let mut args: BTreeMap<&str, &str> = DEFAULT_ARGS.into_iter().collect();
        args.extend(overrides.iter().copied());
        let argv: Vec<&str> = args.iter().flat_map(|(flag, value)| [*flag, *value]).collect();
        let daemon = Daemon::start(&argv).await;
        let bystander = Bystander::start(&daemon, 2, 3, "game").await;
        let baseline_kib = daemon.rss_kib();
        Case { name, daemon, bystander, baseline_kib }
    }

    /// The reference publisher's next blob reaches the reference browser.
    async fn check(&mut self, when: &str) {
        self.bystander.check(&format!("{}: {when}", self.name)).await;
    }

    /// Ends the case: one more bystander check, the summary line, the
    /// memory bound (peak RSS at most `growth_limit_kib` above the
    /// baseline), and a graceful exit of a daemon that is still running.
    async fn finish(mut self, growth_limit_kib: u64, code: &str) {
        self.check("at the end of the case").await;
        assert!(self.daemon.is_running(), "{}: the daemon died:\n{}", self.name, self.daemon.log());
        let peak = self.daemon.peak_rss_kib();
        let growth = peak.saturating_sub(self.baseline_kib);
        println!("ADVERSARIAL case={} peak_rss_kib={peak} code={code}", self.name);
        println!(
            "  {}: RSS before the attack {} KiB, peak {peak} KiB (+{growth} KiB, limit +{growth_limit_kib} KiB), \
             daemon CPU {:?}",
            self.name,
            self.baseline_kib,
            self.daemon.cpu_time()
        );
        assert!(
            growth <= growth_limit_kib,
            "{}: peak RSS {peak} KiB is {growth} KiB above the {} KiB before the attack (limit {growth_limit_kib} KiB)",
            self.name,
            self.baseline_kib
        );
        // Generous: the daemon waits for its closed connections to drain
        // (three probe timeouts each), which a busy machine stretches.
        let stopping = Instant::now();
        let status = self.daemon.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "{}: daemon exit status {status}:\n{}", self.name, self.daemon.log());
        println!("  {}: the daemon exited {:?} after SIGTERM", self.name, stopping.elapsed());
    }
}

/// A frame header: `frame_type`, then a payload length of `len`.
fn header(frame_type: u64, len: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    varint::put(&mut buf, frame_type);
    varint::put(&mut buf, len);
    buf
}

/// An unknown frame type (not defined by version 1): receivers skip it.
const UNKNOWN_TYPE: u64 = 0x21;

/// A raw publisher from `endpoint`: Hello and a first heartbeat `first`,
/// then waits for the Welcome.
async fn raw_publisher(daemon: &Daemon, endpoint: &Endpoint, namespace: &str, first: &[u8]) -> RawClient {
    let mut raw = RawClient::connect(daemon, endpoint).await;
    let mut bytes = encode(&hello(Role::Publisher, namespace, b""));
    bytes.extend(encode(&Frame::Heartbeat { blob: first }));
    raw.write(&bytes).await;
    raw.read_until(FrameType::WELCOME).await;
    raw
}

/// A frame as a raw client saw it: its type and, for Upsert and Remove,
/// the entry's address.
type Seen = (FrameType, Option<SocketAddr>);

/// Reads a fresh raw client's stream (with its own decoder) until a frame
/// of type `wanted`; returns every frame read.
async fn read_frames_until(raw: &mut RawClient, wanted: FrameType) -> Vec<Seen> {
    let mut decoder = FrameDecoder::new(1 << 20);
    within("frames from the daemon", WAIT, async {
        let mut seen: Vec<Seen> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while !seen.iter().any(|(t, _)| *t == wanted) {
            let n = raw.recv.read(&mut buf).await.expect("reading from the daemon").expect("stream finished");
            decoder
                .decode(&buf[..n], |frame| {
                    let address = match &frame {
                        Frame::Upsert(u) => Some(u.address),
                        Frame::Remove { address, .. } => Some(*address),
                        _ => None,
                    };
                    seen.push((frame.frame_type(), address));
                    Ok::<_, DecodeError>(())
                })
                .expect("the daemon sent an undecodable frame");
        }
        seen
    })
    .await
}

/// What a watching browser saw of one entry.
#[derive(Debug, Default)]
struct Watch {
    /// Batches (Synced frames) received.
    batches: usize,
    /// Upserts of the watched entry.
    upserts: usize,
    /// The most Upserts of the watched entry within one batch.
    most_in_one_batch: usize,
    /// Upserts of any other address than those allowed.
    strangers: Vec<SocketAddr>,
}

/// Reads `list` until `stop` flips, counting the Upserts of `watched`
/// and recording Upserts of addresses outside `allowed`.
async fn watch_entry(
    mut list: Browse,
    watched: SocketAddr,
    allowed: Vec<SocketAddr>,
    mut stop: watch::Receiver<bool>,
) -> (Browse, Watch) {
    let mut seen = Watch::default();
    let mut in_batch = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            event = list.next() => match event {
                Some(Ok(BrowserEvent::Upsert(server))) => {
                    if server.address == watched {
                        seen.upserts += 1;
                        in_batch += 1;
                    } else if !allowed.contains(&server.address) {
                        seen.strangers.push(server.address);
                    }
                }
                Some(Ok(BrowserEvent::Synced { .. })) => {
                    seen.batches += 1;
                    seen.most_in_one_batch = seen.most_in_one_batch.max(in_batch);
                    in_batch = 0;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("watching browser failed: {e}"),
                None => panic!("watching browser ended"),
            },
        }
    }
    (list, seen)
}

/// 200 connections that never say Hello, against `--max-handshakes 100`
/// and a 3 s handshake timeout: a third open no stream, a third send the
/// first byte of a Hello, a third send ten unknown frames and no Hello.
/// Each is closed with HANDSHAKE_TIMEOUT no earlier than the timeout, or,
/// arriving while 100 others await their Hello, at once with SERVER_FULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_hello() {
    const CONNECTIONS: usize = 200;
    const MAX_HANDSHAKES: usize = 100;
    const TIMEOUT: Duration = Duration::from_secs(3);
    // One host may hold all of them: this case is about the total.
    let mut case = Case::start(
        "never_hello",
        &[("--handshake-timeout", "3s"), ("--max-handshakes", "100"), ("--max-handshakes-per-ip", "200")],
    )
    .await;
    let endpoints: Vec<Endpoint> = (0..4).map(|h| case.daemon.endpoint(10 + h)).collect();
    let addr = case.daemon.addr();

    let started = Instant::now();
    let mut flood = JoinSet::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(16));
    for i in 0..CONNECTIONS {
        let endpoint = endpoints[i % endpoints.len()].clone();
        let connecting = connecting.clone();
        flood.spawn(async move {
            // A few QUIC handshakes at a time, so that the burst does not
            // overflow a socket buffer and wait for retransmissions.
            let permit = connecting.acquire_owned().await.unwrap();
            let connection = endpoint.connect(addr, "localhost").expect("connect").await.expect("QUIC handshake");
            drop(permit);
            let established = Instant::now();
            let mut _stream = None;
            if i % 3 > 0 {
                // Writes may fail: a refused connection is already closed.
                if let Ok((mut send, recv)) = connection.open_bi().await {
                    let bytes = if i % 3 == 1 { vec![0x01] } else { header(UNKNOWN_TYPE, 0).repeat(10) };
                    let _ = send.write_all(&bytes).await;
                    _stream = Some((send, recv));
                }
            }
            let (code, reason) = close_code(&connection).await;
            (i, established, Instant::now(), code, reason)
        });
    }
    // The reference pair, connected before the flood, is not affected by it.
    case.check("during the flood of silent connections").await;
    let mut results = Vec::new();
    while let Some(result) = within("the silent connections closed", WAIT, flood.join_next()).await {
        results.push(result.unwrap());
    }
    case.check("after the flood").await;

    let first = results.iter().map(|r| r.1).min().unwrap();
    let last = results.iter().map(|r| r.1).max().unwrap();
    let (mut timed_out, mut full) = (Vec::new(), Vec::new());
    for (i, established, closed, code, reason) in &results {
        if *code == ErrorCode::HANDSHAKE_TIMEOUT {
            // The daemon starts the timeout once the connection is
            // established on its side, after the client's side.
            let open = *closed - *established;
            assert!(open >= TIMEOUT - Duration::from_millis(50), "#{i} closed after {open:?}, before the timeout");
            timed_out.push(*closed);
        } else if *code == ErrorCode::SERVER_FULL {
            assert!(reason.contains("handshakes"), "#{i}: {reason}");
            full.push(*closed);
        } else {
            panic!("#{i} closed with {code} ({reason})");
        }
    }
    println!(
        "never_hello: {CONNECTIONS} connections established within {:?} ({:?} from the first attempt): \
         {} HANDSHAKE_TIMEOUT, {} SERVER_FULL",
        last - first,
        last - started,
        timed_out.len(),
        full.len()
    );
    // The first MAX_HANDSHAKES the daemon accepted always found a free slot.
    assert!(timed_out.len() >= MAX_HANDSHAKES, "only {} timed out", timed_out.len());
    // The closes tell when the daemon accepted each connection: a timed-out
    // one TIMEOUT before its close, a refused one at its close (plus the
    // time the close takes to arrive, hence the margin). If every refusal
    // and every accepted connection came before the first slot was freed
    // by a timeout, exactly MAX_HANDSHAKES waited and the rest were refused.
    let margin = Duration::from_millis(500);
    let first_freed = *timed_out.iter().min().unwrap();
    let accepted_spread = *timed_out.iter().max().unwrap() - first_freed;
    let settled = accepted_spread + margin < TIMEOUT && full.iter().all(|&refused| refused + margin < first_freed);
    if settled {
        assert_eq!((timed_out.len(), full.len()), (MAX_HANDSHAKES, CONNECTIONS - MAX_HANDSHAKES));
    } else {
        let last_refusal = full.iter().max().map(|&refused| refused.saturating_duration_since(first_freed));
        println!(
            "never_hello: the daemon accepted the connections too slowly for an exact count (busy machine): \
             accepted within {accepted_spread:?}, last refusal {last_refusal:?} after the first slot was freed"
        );
    }

    // Every slot is free again: a newcomer from a flooding host browses.
    let (_conn, mut list) = start_browser(&case.daemon, &endpoints[0], "game").await;
    let bystander = case.bystander.address();
    wait_synced(&mut list, "a newcomer after the flood", |l| listing(l).keys().eq([&bystander])).await;
    case.finish(24 * MIB, "HANDSHAKE_TIMEOUT+SERVER_FULL").await;
}

/// Frame headers that declare enormous payloads are refused with
/// FRAME_TOO_LARGE as soon as the header is complete: the daemon reads no
/// further than QUIC flow control lets the client send, and buffers none
/// of it. The limit is exact: an unknown frame of the maximum frame size
/// (8,256 bytes with the defaults) is skipped, one byte more is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frame() {
    const MAX_FRAME: u64 = 8256;
    let mut case = Case::start("huge_frame", &[]).await;
    let watcher_endpoint = case.daemon.endpoint(5);
    let (_conn, mut watcher) = start_browser(&case.daemon, &watcher_endpoint, "game").await;

    // A publisher, listed, then a Heartbeat header declaring 1 GiB, followed
    // by as much payload as the daemon lets through.
    let endpoint = case.daemon.endpoint(4);
    let doomed_address = endpoint.local_addr().unwrap();
    let mut doomed = raw_publisher(&case.daemon, &endpoint, "game", b"doomed").await;
    wait_synced(&mut watcher, "the doomed publisher listed", |l| l.server(&doomed_address).is_some()).await;
    doomed.write(&header(FrameType::HEARTBEAT.0, 1 << 30)).await;
    let chunk = vec![0u8; 16 * 1024];
    let mut accepted = 0usize;
    within("the payload refused", WAIT, async {
        while accepted < 64 << 20 {
            match doomed.send.write(&chunk).await {
                Ok(n) => accepted += n,
                Err(_) => break,
            }
        }
    })
    .await;
    let (code, reason) = close_code(&doomed.connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{reason}");
    assert!(reason.contains(&(1u64 << 30).to_string()), "{reason}");
    println!("huge_frame: the daemon let the client write {accepted} payload bytes before closing");
    assert!(accepted < 1 << 20, "the client could write {accepted} bytes of the refused frame");
    wait_synced(&mut watcher, "the doomed publisher removed", |l| l.server(&doomed_address).is_none()).await;
    case.check("after the huge heartbeat").await;

    // A browser whose next frame is of an unknown type declaring 2^62 - 1 bytes.
    let mut browser = RawClient::connect(&case.daemon, &endpoint).await;
    browser.send(&hello(Role::Browser, "game", b"")).await;
    browser.read_until(FrameType::SYNCED).await;
    browser.write(&header(UNKNOWN_TYPE, varint::MAX)).await;
    let (code, reason) = close_code(&browser.connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{reason}");

    // The exact limit, before any Hello: an unknown frame of MAX_FRAME bytes
    // is skipped (the Hello after it is answered), one of MAX_FRAME + 1 is not.
    let mut edge = RawClient::connect(&case.daemon, &endpoint).await;
    let mut bytes = header(UNKNOWN_TYPE, MAX_FRAME);
    bytes.resize(bytes.len() + MAX_FRAME as usize, b'x');
    bytes.extend(encode(&hello(Role::Browser, "game", b"")));
    edge.write(&bytes).await;
    edge.read_until(FrameType::SYNCED).await;
    edge.write(&header(UNKNOWN_TYPE, MAX_FRAME + 1)).await;
    let (code, reason) = close_code(&edge.connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{reason}");
    assert!(reason.contains(&(MAX_FRAME + 1).to_string()) && reason.contains(&MAX_FRAME.to_string()), "{reason}");

    let bystander = case.bystander.address();
    wait_synced(&mut watcher, "only the bystander listed", |l| listing(l).keys().eq([&bystander])).await;
    case.finish(4 * MIB, "FRAME_TOO_LARGE").await;
}

/// 10,000 empty frames of an unknown type interleaved with 10,000 tiny
/// heartbeats, 20,000 frames (about 170 KB) in one write: the daemon skips
/// the first, applies the second in order (the entry ends at the last), a
/// watching browser receives the entry coalesced, and the reference pair
/// is served meanwhile. The burst is legal; the publisher then says Goodbye.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_frame_burst() {
    const FRAMES: usize = 10_000;
    let mut case = Case::start("tiny_frame_burst", &[]).await;
    let watcher_endpoint = case.daemon.endpoint(5);
    let (_conn, watcher) = start_browser(&case.daemon, &watcher_endpoint, "game").await;

    let endpoint = case.daemon.endpoint(4);
    let burster_address = endpoint.local_addr().unwrap();
    let mut burster = raw_publisher(&case.daemon, &endpoint, "game", b"burst 0").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let watching = tokio::spawn(watch_entry(watcher, burster_address, vec![case.bystander.address()], stop_rx));

    let mut burst = Vec::new();
    for i in 1..=FRAMES {
        burst.extend(header(UNKNOWN_TYPE, 0));
        burst.extend(encode(&Frame::Heartbeat { blob: format!("burst {i}").as_bytes() }));
    }
    let bytes = burst.len();
    let started = Instant::now();
    let write = tokio::spawn(async move {
        burster.write(&burst).await;
        burster
    });
    case.check("during the burst").await;
    let mut burster = within("the burst written", WAIT, write).await.unwrap();
    let written = started.elapsed();

    // The daemon applied every heartbeat, in order: a browser connecting now
    // lists the last one.
    let final_blob = Bytes::from(format!("burst {FRAMES}"));
    let (_conn2, mut late) = start_browser(&case.daemon, &watcher_endpoint, "game").await;
    wait_synced(&mut late, "the last heartbeat of the burst", |l| {
        l.server(&burster_address).is_some_and(|s| s.blob == final_blob)
    })
    .await;
    let applied = started.elapsed();
    case.check("after the burst").await;
    stop_tx.send_replace(true);
    let (mut watcher, seen) = within("the watcher", WAIT, watching).await.unwrap();
    wait_synced(&mut watcher, "the watcher at the last heartbeat", |l| {
        l.server(&burster_address).is_some_and(|s| s.blob == final_blob)
    })
    .await;
    println!(
        "tiny_frame_burst: {} frames ({bytes} bytes) written in {written:?}, applied within {applied:?}; \
         the watcher saw the entry {} times in {} batches",
        2 * FRAMES,
        seen.upserts,
        seen.batches
    );
    assert!(seen.strangers.is_empty(), "unexpected entries: {:?}", seen.strangers);
    assert!(seen.upserts < FRAMES / 20, "{} upserts for {FRAMES} heartbeats: not coalesced", seen.upserts);
    assert!(applied < Duration::from_secs(15), "the burst took {applied:?} to apply");

    burster.send(&Frame::Goodbye).await;
    let (code, reason) = close_code(&burster.connection).await;
    assert_eq!((code, reason.as_str()), (ErrorCode::NO_ERROR, "goodbye"));
    wait_synced(&mut watcher, "the burster gone after Goodbye", |l| l.server(&burster_address).is_none()).await;
    case.finish(4 * MIB, "NO_ERROR").await;
}

/// A publisher heartbeating at 1 kHz for 3 s, every blob different: the
/// server applies them all, and a watching browser receives that entry at
/// most about once per 200 ms update interval (coalesced, never queued),
/// reaches its last blob, and the daemon's RSS stays flat meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_1khz() {
    const RUN: Duration = Duration::from_secs(3);
    const INTERVAL: Duration = Duration::from_millis(200);
    let mut case = Case::start("heartbeat_1khz", &[]).await;
    let watcher_endpoint = case.daemon.endpoint(5);
    let (_conn, watcher) = start_browser(&case.daemon, &watcher_endpoint, "game").await;
    let endpoint = case.daemon.endpoint(4);
    let fast_address = endpoint.local_addr().unwrap();
    let mut fast = raw_publisher(&case.daemon, &endpoint, "game", b"fast 0").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let watching = tokio::spawn(watch_entry(watcher, fast_address, vec![case.bystander.address()], stop_rx));

    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < RUN {
            ticker.tick().await;
            sent += 1;
            fast.send(&Frame::Heartbeat { blob: format!("fast {sent:08}").as_bytes() }).await;
        }
        (fast, sent, started.elapsed())
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_early = case.daemon.rss_kib();
    let mut samples = vec![rss_early];
    while !sender.is_finished() {
        case.check("during the 1 kHz heartbeats").await;
        samples.push(case.daemon.rss_kib());
        assert!(started.elapsed() < RUN + WAIT, "the 1 kHz sender does not end");
    }
    let (mut fast, sent, took) = sender.await.unwrap();
    let rss_late = case.daemon.rss_kib();
    stop_tx.send_replace(true);
    let (mut watcher, seen) = within("the watcher", WAIT, watching).await.unwrap();
    let rate = sent as f64 / took.as_secs_f64();
    println!(
        "heartbeat_1khz: {sent} heartbeats in {took:?} ({rate:.0}/s); the watcher saw the entry {} times in {} \
         batches (at most {} in one); RSS {rss_early} KiB after 0.5 s, {rss_late} KiB at the end, samples {samples:?}",
        seen.upserts, seen.batches, seen.most_in_one_batch
    );
    assert!(sent >= 1200, "the sender managed only {sent} heartbeats in {took:?}");
    // Batches start at most once per update interval (plus the snapshot)...
    let max_batches = (took.as_millis() / INTERVAL.as_millis()) as usize + 2;
    assert!(seen.batches <= max_batches, "{} batches in {took:?}", seen.batches);
    // ...and carry the entry at most once per transmission; these batches
    // are one transmission each.
    assert!(seen.most_in_one_batch <= 1, "the entry came {} times in one batch", seen.most_in_one_batch);
    assert!(seen.upserts <= max_batches, "{} upserts of {sent} heartbeats: not coalesced", seen.upserts);
    // It was not starved either: updates kept coming during the run.
    assert!(seen.upserts >= max_batches / 3, "only {} upserts in {took:?}", seen.upserts);
    assert!(seen.strangers.is_empty(), "unexpected entries: {:?}", seen.strangers);

    let last = Bytes::from(format!("fast {sent:08}"));
    wait_synced(&mut watcher, "the last 1 kHz heartbeat", |l| l.server(&fast_address).is_some_and(|s| s.blob == last))
        .await;
    let growth = rss_late.saturating_sub(rss_early);
    assert!(growth < 4 * MIB, "RSS grew {growth} KiB during the 1 kHz heartbeats: {samples:?}");
    fast.send(&Frame::Goodbye).await;
    let (code, reason) = close_code(&fast.connection).await;
    assert_eq!((code, reason.as_str()), (ErrorCode::NO_ERROR, "goodbye"));
    case.finish(4 * MIB, "NO_ERROR").await;
}

/// A raw browser on its own endpoint whose stream receive window is only
/// `window` bytes, so that not reading holds the daemon back at once.
async fn narrow_browser(daemon: &Daemon, host_n: u8, window: u32) -> (Endpoint, RawClient) {
    let mut config = metaserve_tokio::tls::client_config_pinned(daemon.fingerprint()).unwrap();
    let mut transport = metaserve_tokio::tls::client_transport();
    transport.stream_receive_window(window.into()).receive_window((2 * window).into());
    config.transport_config(Arc::new(transport));
    let endpoint = metaserve_tokio::client_endpoint(SocketAddr::new(host(host_n), 0), config).unwrap();
    let mut raw = RawClient::connect(daemon, &endpoint).await;
    raw.send(&hello(Role::Browser, "busy", b"")).await;
    (endpoint, raw)
}

/// 20 publishers change 2 KiB heartbeats every 100 ms for 6 s while 8
/// browsers never read (slowloris) and 2 read one byte per second through a
/// 4 KiB receive window. The slow browsers stay connected and cost the
/// daemon bounded memory and no CPU once idle; a reading browser and the
/// reference pair keep getting every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_browsers() {
    const PUBLISHERS: usize = 20;
    const BLOB: usize = 2048;
    const RUN: Duration = Duration::from_secs(6);
    let mut case = Case::start("slow_browsers", &[]).await;
    let daemon = &case.daemon;
    let publisher_endpoints: Vec<Endpoint> = (0..PUBLISHERS).map(|i| daemon.endpoint(20 + (i % 2) as u8)).collect();
    let mut publishers = Vec::new();
    for (i, endpoint) in publisher_endpoints.iter().enumerate() {
        let blob = metaserve_tests::blob(&format!("pub {i} beat 0;"), BLOB);
        publishers.push(TestPublisher::start(daemon, endpoint, PublishOptions::new("busy"), blob).await);
    }
    let reader_endpoint = daemon.endpoint(5);
    let (_conn, mut reader) = start_browser(daemon, &reader_endpoint, "busy").await;
    wait_synced(&mut reader, "all publishers listed", |l| l.servers().len() == PUBLISHERS).await;

    let slowloris_endpoint = daemon.endpoint(6);
    let mut slowloris = Vec::new();
    for _ in 0..8 {
        let mut raw = RawClient::connect(daemon, &slowloris_endpoint).await;
        raw.send(&hello(Role::Browser, "busy", b"")).await;
        slowloris.push(raw);
    }
    let mut trickles = Vec::new();
    for _ in 0..2 {
        let (endpoint, raw) = narrow_browser(daemon, 7, 4096).await;
        let stop = Instant::now() + RUN + Duration::from_secs(2);
        trickles.push(tokio::spawn(async move {
            let _endpoint = endpoint;
            let mut raw = raw;
            let mut read = Vec::new();
            let mut byte = [0u8; 1];
            while Instant::now() < stop {
                match within("one byte", WAIT, raw.recv.read(&mut byte)).await {
                    Ok(Some(1)) => read.push(byte[0]),
                    other => panic!("the one-byte reader failed: {other:?}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (raw, read)
        }));
    }
    let reader_task = tokio::spawn(async move {
        // Keep reading so this browser is never the slow one.
        let mut batches = 0usize;
        let started = Instant::now();
        while started.elapsed() < RUN {
            match tokio::time::timeout(Duration::from_millis(100), reader.next()).await {
                Ok(Some(Ok(BrowserEvent::Synced { .. }))) => batches += 1,
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(other) => panic!("the reading browser: {other:?}"),
            }
        }
        (reader, batches)
    });

    // The run: every publisher changes its blob every 100 ms.
    let rss_start = case.daemon.rss_kib();
    let started = Instant::now();
    let mut beat = 0u64;
    let mut samples = Vec::new();
    let mut next_check = started;
    while started.elapsed() < RUN {
        beat += 1;
        for (i, p) in publishers.iter().enumerate() {
            p.set(metaserve_tests::blob(&format!("pub {i} beat {beat};"), BLOB)).await;
        }
        if Instant::now() >= next_check {
            case.check("while browsers read slowly").await;
            samples.push(case.daemon.rss_kib());
            next_check = Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_end = case.daemon.rss_kib();
    let (mut reader, batches) = within("the reading browser", WAIT, reader_task).await.unwrap();
    let finals: Vec<(SocketAddr, Bytes)> = publishers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.address, metaserve_tests::blob(&format!("pub {i} beat {beat};"), BLOB)))
        .collect();
    wait_synced(&mut reader, "the reading browser at the last beat", |l| {
        finals.iter().all(|(address, blob)| l.server(address).is_some_and(|s| s.blob == blob))
    })
    .await;

    // Quiet now: stalled browsers must cost no CPU (no busy polling).
    let cpu_before = case.daemon.cpu_time();
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = case.daemon.cpu_time() - cpu_before;
    let quiet = quiet.elapsed();

    let mut trickled = Vec::new();
    for trickle in trickles {
        let (raw, read) = within("the one-byte readers", WAIT * 2, trickle).await.unwrap();
        trickled.push(read.len());
        // What trickled in is the start of the stream: a Welcome.
        assert_eq!(read.first(), Some(&0x02), "the first byte is not a Welcome frame type: {read:?}");
        assert!(raw.connection.close_reason().is_none(), "a one-byte reader was disconnected");
    }
    for raw in &slowloris {
        assert!(raw.connection.close_reason().is_none(), "a stalled browser was disconnected");
    }
    println!(
        "slow_browsers: {PUBLISHERS} publishers x {beat} beats of {BLOB} bytes in {RUN:?}; reading browser: \
         {batches} batches; one-byte readers read {trickled:?} bytes; RSS {rss_start} KiB -> {rss_end} KiB, \
         samples {samples:?}; daemon CPU while quiet with stalled browsers: {idle_cpu:?} in {quiet:?}"
    );
    assert!(batches >= 10, "the reading browser got only {batches} batches in {RUN:?}");
    assert!(trickled.iter().all(|&n| n >= 4), "the one-byte readers read {trickled:?} bytes");
    assert!(idle_cpu < quiet / 4, "the daemon used {idle_cpu:?} of CPU in {quiet:?} with nothing to do");

    // A stalled browser that starts reading catches up to the newest beat.
    let stalled = &mut slowloris[0];
    let frames = read_frames_until(stalled, FrameType::SYNCED).await;
    assert_eq!(frames.first().map(|f| f.0), Some(FrameType::WELCOME));
    drop(publishers);
    case.finish(12 * MIB, "none (stay connected)").await;
}

/// A publisher Hello from `127.0.0.<n>` declaring game port `port`, with a first heartbeat.
fn publisher_hello_declaring(namespace: &str, port: u16) -> Vec<u8> {
    let mut bytes = encode(&Frame::Hello(metaserve_proto::frame::Hello {
        version: metaserve_proto::PROTOCOL_VERSION,
        role: Role::Publisher,
        namespace,
        token: b"",
        declared_port: Some(port),
        resume: None,
    }));
    bytes.extend(encode(&Frame::Heartbeat { blob: b"one too many" }));
    bytes
}

/// Publishers beyond `--max-publishers-per-ip 3` and browsers beyond
/// `--max-browsers-per-ip 4` from 127.0.0.10, ten of each at once, are
/// refused with IP_LIMIT; the accepted ones from that address, and
/// everyone from 127.0.0.11, are served, and no refused publisher is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_limits() {
    const PUBLISHERS: usize = 3;
    const BROWSERS: usize = 4;
    const EXTRA: usize = 10;
    let mut case = Case::start("ip_limits", &[("--max-publishers-per-ip", "3"), ("--max-browsers-per-ip", "4")]).await;
    let crowded: Vec<Endpoint> = (0..=PUBLISHERS).map(|_| case.daemon.endpoint(10)).collect();
    let other: Vec<Endpoint> = (0..=PUBLISHERS).map(|_| case.daemon.endpoint(11)).collect();

    let mut publishers = Vec::new();
    for (i, endpoint) in crowded.iter().take(PUBLISHERS).chain(other.iter().take(PUBLISHERS)).enumerate() {
        let options = PublishOptions::new("game");
        publishers.push(TestPublisher::start(&case.daemon, endpoint, options, format!("p{i} v0")).await);
    }
    let mut browsers = Vec::new();
    for _ in 0..BROWSERS {
        browsers.push(start_browser(&case.daemon, &crowded[PUBLISHERS], "game").await);
    }

    // Ten more publishers (each declaring its own game port, so none takes
    // over an entry) and ten more browsers from 127.0.0.10, all at once.
    let mut refused = JoinSet::new();
    for i in 0..2 * EXTRA {
        let connecting = crowded[PUBLISHERS].connect(case.daemon.addr(), "localhost").unwrap();
        refused.spawn(async move {
            let connection = connecting.await.expect("QUIC handshake");
            let (mut send, _recv) = connection.open_bi().await.unwrap();
            let bytes = if i < EXTRA {
                publisher_hello_declaring("game", 30_000 + i as u16)
            } else {
                encode(&hello(Role::Browser, "game", b""))
            };
            let _ = send.write_all(&bytes).await;
            (i, close_code(&connection).await)
        });
    }
    // The real clients too.
    let mut extra_publisher =
        TestPublisher::start(&case.daemon, &crowded[PUBLISHERS], PublishOptions::new("other"), "extra").await;
    assert_rejected(extra_publisher.outcome().await, ErrorCode::IP_LIMIT);
    let connection = case.daemon.connect(&crowded[PUBLISHERS]).await;
    assert_rejected(browse(&connection, BrowseOptions::new("other")).await, ErrorCode::IP_LIMIT);
    case.check("during the refusals").await;
    while let Some(result) = within("the refusals", WAIT, refused.join_next()).await {
        let (i, (code, reason)) = result.unwrap();
        assert_eq!(code, ErrorCode::IP_LIMIT, "extra #{i}: {reason}");
        let role = if i < EXTRA { "publishers" } else { "browsers" };
        assert!(reason.contains(role) && reason.contains("127.0.0.10"), "extra #{i}: {reason}");
    }

    // Everyone accepted is served: the six publishers change their blobs,
    // and every browser, from either address, lists exactly them and the
    // bystander.
    for (i, p) in publishers.iter().enumerate() {
        p.set(format!("p{i} v1")).await;
    }
    let (_conn, other_browser) = start_browser(&case.daemon, &other[PUBLISHERS], "game").await;
    browsers.push((connection, other_browser));
    let bystander = case.bystander.address();
    let expected: Vec<(SocketAddr, Bytes)> =
        publishers.iter().enumerate().map(|(i, p)| (p.address, Bytes::from(format!("p{i} v1")))).collect();
    for (_, list) in &mut browsers {
        wait_synced(list, "the accepted publishers' updates", |l| {
            l.servers().len() == 2 * PUBLISHERS + 1
                && l.server(&bystander).is_some()
                && expected.iter().all(|(address, blob)| l.server(address).is_some_and(|s| s.blob == blob))
        })
        .await;
    }
    assert!(publishers.iter().all(|p| !p.is_finished()), "an accepted publisher was disconnected");
    case.finish(4 * MIB, "IP_LIMIT").await;
}

/// A publisher that says Hello and never heartbeats, in the reference
/// namespace and alone in a new one, then browsers connecting after it (an
/// older metaserver crashed listing such a server): its entry simply does
/// not exist, browsers get a normal snapshot, and it is closed with
/// HEARTBEAT_TIMEOUT once the 2 s entry TTL has passed since its Hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_publisher() {
    const TTL: Duration = Duration::from_secs(2);
    let mut case = Case::start("silent_publisher", &[]).await;
    let bystander = case.bystander.address();
    let silent_endpoints = [case.daemon.endpoint(4), case.daemon.endpoint(4)];
    let mut silent = Vec::new();
    let hello_at = Instant::now();
    for (endpoint, namespace) in silent_endpoints.iter().zip(["game", "quiet"]) {
        let mut raw = RawClient::connect(&case.daemon, endpoint).await;
        raw.send(&hello(Role::Publisher, namespace, b"")).await;
        raw.read_until(FrameType::WELCOME).await;
        silent.push(raw);
    }
    let silent_addresses: Vec<SocketAddr> = silent_endpoints.iter().map(|e| e.local_addr().unwrap()).collect();

    // Browsers connecting after them get a normal snapshot.
    let browser_endpoint = case.daemon.endpoint(5);
    let (_c1, mut game) = start_browser(&case.daemon, &browser_endpoint, "game").await;
    wait_synced(&mut game, "the snapshot of game", |_| true).await;
    assert_eq!(listing(&game).keys().copied().collect::<Vec<_>>(), [bystander]);
    let (_c2, mut quiet) = start_browser(&case.daemon, &browser_endpoint, "quiet").await;
    wait_synced(&mut quiet, "the snapshot of quiet", |_| true).await;
    assert_eq!(quiet.servers().len(), 0);
    let mut raw_game = RawClient::connect(&case.daemon, &browser_endpoint).await;
    raw_game.send(&hello(Role::Browser, "game", b"")).await;
    assert_eq!(
        read_frames_until(&mut raw_game, FrameType::SYNCED).await,
        [(FrameType::WELCOME, None), (FrameType::UPSERT, Some(bystander)), (FrameType::SYNCED, None)]
    );
    let mut raw_quiet = RawClient::connect(&case.daemon, &browser_endpoint).await;
    raw_quiet.send(&hello(Role::Browser, "quiet", b"")).await;
    assert_eq!(
        read_frames_until(&mut raw_quiet, FrameType::SYNCED).await,
        [(FrameType::WELCOME, None), (FrameType::SYNCED, None)]
    );

    // Until the TTL, the browsers see the reference publisher's updates and
    // never the silent publishers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let watching = tokio::spawn(watch_entry(game, silent_addresses[0], vec![bystander], stop_rx.clone()));
    let watching_quiet = tokio::spawn(watch_entry(quiet, silent_addresses[1], vec![], stop_rx));
    case.check("with silent publishers connected").await;
    for (raw, namespace) in silent.iter().zip(["game", "quiet"]) {
        let (code, reason) = close_code(&raw.connection).await;
        let after = hello_at.elapsed();
        assert_eq!(code, ErrorCode::HEARTBEAT_TIMEOUT, "{namespace}: {reason}");
        assert!(after >= TTL - Duration::from_millis(50), "{namespace}: closed after {after:?}, before the TTL");
        assert!(after < TTL + Duration::from_secs(3), "{namespace}: closed only after {after:?}");
    }
    case.check("after the silent publishers timed out").await;
    stop_tx.send_replace(true);
    for watching in [watching, watching_quiet] {
        let (list, seen) = within("the watchers", WAIT, watching).await.unwrap();
        assert_eq!(seen.upserts, 0, "a silent publisher was listed");
        assert!(seen.strangers.is_empty(), "unexpected entries: {:?}", seen.strangers);
        assert!(list.servers().all(|s| s.address == bystander));
    }
    let (_c3, mut late) = start_browser(&case.daemon, &browser_endpoint, "quiet").await;
    wait_synced(&mut late, "a later snapshot of quiet", |l| l.servers().len() == 0).await;
    case.finish(4 * MIB, "HEARTBEAT_TIMEOUT").await;
}

/// Session streams finished (FIN) before any Hello — empty, after an
/// unknown frame, or after the first bytes of a Hello — thirty times in a
/// row with `--max-handshakes 8`: each connection is closed cleanly with
/// NO_ERROR ("session stream finished"), or with PROTOCOL_VIOLATION when the
/// stream ended inside the Hello; its handshake slot is released
/// (no SERVER_FULL), and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_before_hello() {
    const ROUNDS: usize = 30;
    let mut case = Case::start("fin_before_hello", &[("--max-handshakes", "8")]).await;
    let endpoint = case.daemon.endpoint(4);
    let truncated_hello = &encode(&hello(Role::Browser, "game", b""))[..4];
    for round in 0..ROUNDS {
        let connection = case.daemon.connect(&endpoint).await;
        let (mut send, _recv) = connection.open_bi().await.unwrap();
        match round % 3 {
            0 => {}
            1 => send.write_all(&[header(UNKNOWN_TYPE, 3), b"abc".to_vec()].concat()).await.unwrap(),
            // The stream ends inside a frame: a protocol violation.
            _ => send.write_all(truncated_hello).await.unwrap(),
        }
        send.finish().unwrap();
        let (code, reason) = close_code(&connection).await;
        let expected = match round % 3 {
            2 => (ErrorCode::PROTOCOL_VIOLATION, "session stream ended inside a frame (4 bytes of it received)"),
            _ => (ErrorCode::NO_ERROR, "session stream finished"),
        };
        assert_eq!((code, reason.as_str()), expected, "round {round} (variant {})", round % 3);
        if round % 10 == 9 {
            case.check("between streams finished before Hello").await;
        }
    }
    let (_conn, mut list) = start_browser(&case.daemon, &endpoint, "game").await;
    let bystander = case.bystander.address();
    wait_synced(&mut list, "a browser after the finished streams", |l| listing(l).keys().eq([&bystander])).await;
    case.finish(4 * MIB, "NO_ERROR").await;
}
