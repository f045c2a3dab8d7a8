//! The daemon against a hostile Internet, on loopback: what a peer can make
//! it hold before the application reads anything, and what a flood of
//! connection attempts costs everyone else. Each test starts its own daemon
//! and is bounded in count and time.
//!
//! | test | attacker | what must hold |
//! |---|---|---|
//! | `datagrams_are_not_offered` | a client that wants to send QUIC DATAGRAM frames | the server does not advertise them, so there is no datagram buffer to fill |
//! | `half_open_handshakes_are_bounded` | 2,000 valid Initial packets from 8 hosts, never continued | handshakes in progress stay within `--max-connecting` (refused or Retried beyond it), RSS bounded, the bystander misses no update |
//! | `one_host_cannot_hold_every_pending_handshake` | one host holding 200 connections that never say Hello | an honest publisher elsewhere is listed; refusals are `IP_LIMIT`; the log stays short |
//! | `a_restarted_daemon_resets_its_predecessors_connections` | none: the daemon is SIGKILLed and restarted | its old clients get a stateless reset instead of waiting for their idle timeout |

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaserve_tests::{
    browse_end, close_code, host, listing, start_browser, wait_synced, within, Bystander, Daemon, TestPublisher, WAIT,
};
use metaserve_tokio::{ClientError, ErrorCode, PublishOptions};
use quinn::ConnectionError;
use tokio::task::JoinSet;

/// One MiB in KiB, the unit of `/proc/<pid>/status`.
const MIB: u64 = 1024;

/// The value of an unlabelled metric (or one with exactly `labels`).
async fn metric(daemon: &Daemon, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(daemon.http_url("/metrics")).await.unwrap().text().await.unwrap();
    let wanted = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .unwrap_or_else(|| panic!("no metric {name}{labels} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// The protocol uses no datagrams, so the server must not offer any: a peer
/// that sends a DATAGRAM frame anyway is closed by QUIC itself
/// (`PROTOCOL_VIOLATION`), and none is ever buffered. (Offered, each
/// datagram pinned its whole receive buffer: 21.5 MB per connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_are_not_offered() {
    let daemon = Daemon::start(&[]).await;
    // A client willing to send datagrams (metaserve's own clients are not).
    let mut config = metaserve_tokio::tls::client_config_pinned(daemon.fingerprint()).unwrap();
    config.transport_config(Arc::new(quinn::TransportConfig::default()));
    let endpoint = metaserve_tokio::client_endpoint(SocketAddr::new(host(2), 0), config).unwrap();
    let connection = daemon.connect(&endpoint).await;
    assert_eq!(connection.max_datagram_size(), None, "the server advertises no DATAGRAM support");
    let refused = connection.send_datagram(bytes::Bytes::from_static(b"x"));
    assert!(matches!(refused, Err(quinn::SendDatagramError::UnsupportedByPeer)), "{refused:?}");
}

/// Valid Initial packets that are never continued, each from a fresh
/// connection ID: the daemon refuses (before any TLS work) or asks for a
/// Retry beyond its bounds, so half-open handshakes cannot pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_bounded() {
    const ATTEMPTS: usize = 2_000;
    const HOSTS: u8 = 8;
    const MAX_CONNECTING: usize = 128;
    let daemon = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--update-interval",
        "200ms",
        "--handshake-timeout",
        "3s",
        "--max-connecting",
        &MAX_CONNECTING.to_string(),
        "--max-connecting-per-ip",
        "32",
        "--validate-above",
        "16",
    ])
    .await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;
    let rss_before = daemon.rss_kib();

    // A quinn-proto client endpoint makes real Initial packets (a
    // ClientHello each); they are sent from plain sockets that never read.
    let client_config = metaserve_tokio::tls::client_config_pinned(daemon.fingerprint()).unwrap();
    let addr = daemon.addr();
    let flood = tokio::task::spawn_blocking(move || {
        let sockets: Vec<UdpSocket> =
            (0..HOSTS).map(|h| UdpSocket::bind(SocketAddr::new(host(20 + h), 0)).unwrap()).collect();
        let mut endpoint =
            quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, true, None);
        let mut datagram = Vec::new();
        let started = Instant::now();
        for i in 0..ATTEMPTS {
            let now = Instant::now();
            let (_, mut connection) = endpoint.connect(now, client_config.clone(), addr, "localhost").unwrap();
            datagram.clear();
            let transmit = connection.poll_transmit(now, 1, &mut datagram).expect("an Initial");
            // The receive queue may overflow under the burst: a lost Initial is no attempt.
            let _ = sockets[i % sockets.len()].send_to(&datagram[..transmit.size], addr);
        }
        started.elapsed()
    });
    // The bystander keeps publishing and browsing through the flood.
    let mut checks = 0;
    while !flood.is_finished() {
        bystander.check("during the flood of half-open handshakes").await;
        checks += 1;
    }
    let elapsed = flood.await.unwrap();
    let in_progress = metric(&daemon, "metaserve_quic_handshakes_in_progress", "").await;
    let refused = metric(&daemon, "metaserve_quic_attempts_total", "{outcome=\"refused\"}").await;
    let retried = metric(&daemon, "metaserve_quic_attempts_total", "{outcome=\"retry\"}").await;
    let peak = daemon.peak_rss_kib();
    println!(
        "half_open: {ATTEMPTS} Initials in {elapsed:?}; in progress after: {in_progress}, refused {refused}, \
         retried {retried}; RSS {} -> peak {} KiB; {checks} bystander checks during the flood",
        rss_before, peak
    );
    assert!(in_progress <= MAX_CONNECTING as f64, "{in_progress} handshakes in progress");
    assert!(retried > 0.0, "the flood was asked to validate its addresses");
    // The attempts that arrived were accepted (at most MAX_CONNECTING at a
    // time, each ~20 KiB), refused or retried: nothing else holds memory.
    assert!(peak - rss_before < 30 * MIB, "RSS grew from {rss_before} KiB to a peak of {peak} KiB");
    // Those accepted time out and release their slots.
    within("the half-open handshakes to time out", WAIT, async {
        while metric(&daemon, "metaserve_quic_handshakes_in_progress", "").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(metric(&daemon, "metaserve_quic_handshakes_timed_out_total", "").await > 0.0);
    bystander.check("after the flood").await;
}

/// One host opens 200 connections and never says Hello, against
/// `--max-handshakes 100`: it gets its per-IP share (64) and the rest are
/// refused with IP_LIMIT, so the table is never full and an honest
/// publisher from another host is listed at once. Every refusal would be a
/// log line: the log stays bounded and has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_hold_every_pending_handshake() {
    const CONNECTIONS: usize = 200;
    let daemon =
        Daemon::start(&["--update-interval", "200ms", "--handshake-timeout", "20s", "--max-handshakes", "100"]).await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;
    let attacker = daemon.endpoint(30);
    let addr = daemon.addr();
    let started = Instant::now();
    let mut silent = JoinSet::new();
    let connecting = Arc::new(tokio::sync::Semaphore::new(16));
    for _ in 0..CONNECTIONS {
        let (attacker, connecting) = (attacker.clone(), connecting.clone());
        silent.spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            let connection = attacker.connect(addr, "localhost").unwrap().await.expect("QUIC handshake");
            drop(permit);
            // Refused ones are closed at once; the others wait for their timeout.
            tokio::select! {
                closed = close_code(&connection) => Some(closed),
                _ = tokio::time::sleep(Duration::from_secs(5)) => None,
            }
        });
    }
    let mut refused = Vec::new();
    let mut held = 0;
    while let Some(result) = within("the silent connections", WAIT, silent.join_next()).await {
        match result.unwrap() {
            Some(closed) => refused.push(closed),
            None => held += 1,
        }
    }
    let attack = started.elapsed();
    // While the attacker holds its share, an honest publisher is listed.
    let honest_endpoint = daemon.endpoint(31);
    let honest = TestPublisher::start(&daemon, &honest_endpoint, PublishOptions::new("game"), "honest").await;
    let watcher_endpoint = daemon.endpoint(32);
    let (_watcher, mut watcher) = start_browser(&daemon, &watcher_endpoint, "game").await;
    wait_synced(&mut watcher, "the honest publisher listed", |l| listing(l).contains_key(&honest.address)).await;
    bystander.check("while the attacker holds its share").await;

    println!("one_host: {held} held, {} refused in {attack:?}", refused.len());
    assert_eq!(held, 64, "the attacker holds exactly its per-IP share");
    for (code, reason) in &refused {
        assert_eq!(*code, ErrorCode::IP_LIMIT, "{reason}");
        assert_eq!(reason, "too many pending handshakes from 127.0.0.30 (limit 64)");
    }
    let log = daemon.log();
    let refusal_lines = log.matches("connection refused").count();
    let window_limit = 20 * (attack.as_secs() as usize + 2);
    assert!(refusal_lines <= window_limit, "{refusal_lines} refusal log lines in {attack:?}");
    if refused.len() > window_limit {
        assert!(log.contains("more such log lines"), "suppressed lines are counted in the log");
    }
    assert!(!log.contains('\u{1b}'), "no ANSI colour codes in a log that is not a terminal");
}

/// The daemon is killed with SIGKILL and restarted on the same port. Its
/// stateless-reset key is derived from its (reused) development key, so its
/// predecessor's clients are reset at their next packet (at most one
/// keep-alive interval, 2 s) instead of hanging until their 30 s idle
/// timeout; a browser then reconnects and gets the list again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_resets_its_predecessors_connections() {
    let mut daemon = Daemon::start(&["--update-interval", "200ms"]).await;
    let publisher_endpoint = daemon.endpoint(2);
    let mut publisher = TestPublisher::start(&daemon, &publisher_endpoint, PublishOptions::new("game"), "one").await;
    let browser_endpoint = daemon.endpoint(3);
    let (browser_connection, mut list) = start_browser(&daemon, &browser_endpoint, "game").await;
    wait_synced(&mut list, "the publisher listed", |l| listing(l).contains_key(&publisher.address)).await;

    daemon.kill_and_restart().await;
    let restarted = Instant::now();
    // Half the idle timeout: a client that waited for it would fail this.
    let limit = Duration::from_secs(15);
    let reason = within("the browser's connection to be reset", limit, browser_connection.closed()).await;
    assert_eq!(reason, ConnectionError::Reset, "closed by a stateless reset");
    let publisher_end = within("the publisher's connection to be reset", limit, publisher.outcome()).await;
    println!("restart: browser reset after {:?}; publisher ended with {publisher_end:?}", restarted.elapsed());
    let ended = browse_end(&mut list).await;
    assert!(matches!(ended, Some(ClientError::ConnectionLost(ConnectionError::Reset))), "{ended:?}");

    // A new session on the restarted daemon lists the game again.
    let publisher_endpoint = daemon.endpoint(4);
    let again = TestPublisher::start(&daemon, &publisher_endpoint, PublishOptions::new("game"), "two").await;
    let (_connection, mut list) = start_browser(&daemon, &browser_endpoint, "game").await;
    wait_synced(&mut list, "listed after the restart", |l| listing(l).contains_key(&again.address)).await;
    assert_eq!(listing(&list).len(), 1, "the killed daemon's entries did not survive it");
}
