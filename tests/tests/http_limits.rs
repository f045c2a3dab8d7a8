//! The HTTP API's limits against a real daemon: clients that hold
//! connections without sending a request, send endless or oversized request
//! heads, open too many connections, or stop reading, are cut off and
//! counted, while other clients are served; many downloads of a large,
//! changing list share one serialization per second; the server has threads
//! of its own and shuts down gracefully.
//!
//! Timing appears only as generous bounds on timeouts the tests set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaserve_tests::{
    blob, http_get_from, listing, metric, read_until_closed, start_browser, tcp_from, wait_synced, within, Daemon,
    TestPublisher, WAIT,
};
use metaserve_tokio::PublishOptions;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Publishing in `namespace` as game server `i` of its host: a port of its
/// own, since entries from one address and port replace each other.
fn options(namespace: &str, i: usize) -> PublishOptions {
    PublishOptions { declared_port: Some(20_000 + i as u16), ..PublishOptions::new(namespace) }
}

/// A generous bound on something a 1 s timeout set by the test must cause.
const TIMEOUT_BOUND: Duration = Duration::from_secs(10);

/// Every `metaserve_http_connections` reading includes the connection of the
/// scrape itself.
const SCRAPE: f64 = 1.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_endless_request_heads_are_closed_after_the_header_timeout() {
    let daemon = Daemon::start(&["--http", "127.0.0.1:0", "--http-header-timeout", "1s"]).await;
    let addr = daemon.http_addr();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tcp_from(2, addr).await);
    }
    // A request head that never ends: one more header line every 200 ms, so
    // the connection is never quiet; the timeout covers the whole head.
    let mut trickling = tcp_from(3, addr).await;
    let trickle = tokio::spawn(async move {
        let _ = trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: metaserve\r\n").await;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if trickling.write_all(b"X-Slow: still coming\r\n").await.is_err() {
                return true;
            }
        }
        false
    });
    for (i, stream) in silent.iter_mut().enumerate() {
        let received = within(&format!("silent connection {i} closed"), TIMEOUT_BOUND, read_until_closed(stream)).await;
        assert!(received.is_empty(), "a silent connection is closed without a response");
    }
    assert!(within("the endless request head cut off", TIMEOUT_BOUND, trickle).await.unwrap());

    let timeouts = daemon
        .wait_metric(4, "metaserve_http_connections_dropped_total", &[("reason", "header_timeout")], |n| n >= 21.0)
        .await;
    assert_eq!(timeouts, 21.0);
    daemon.wait_metric(4, "metaserve_http_connections", &[], |n| n == SCRAPE).await;
    // The API still answers.
    assert_eq!(http_get_from(5, addr, "/healthz").await, Some((200, b"ok\n".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_oversized_request_head_is_refused_and_pins_no_memory() {
    const CLIENTS: usize = 500;
    const HEAD: usize = 400 * 1024;
    // A long header timeout: these connections must end for their size.
    let daemon = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--http-header-timeout",
        "120s",
        "--http-max-connections-per-ip",
        "1000",
    ])
    .await;
    let addr = daemon.http_addr();
    let peak_before = daemon.peak_rss_kib();
    let padding = vec![b'a'; HEAD];
    let mut held = Vec::new();
    for i in 0..CLIENTS {
        let mut stream = tcp_from(2 + (i % 8) as u8, addr).await;
        // The daemon stops reading at its limit and closes: writing may fail.
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: metaserve\r\nX-Big: ").await;
        let _ = within("writing a big request head", WAIT, stream.write_all(&padding)).await;
        held.push(stream);
    }
    // The clients keep their end open and never finish the head; the daemon
    // answers 431 (lost if its close resets the connection) and closes.
    for (i, stream) in held.iter_mut().enumerate() {
        let received = within(&format!("oversized head {i} refused"), WAIT, read_until_closed(stream)).await;
        let text = String::from_utf8_lossy(&received);
        assert!(received.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    }
    let refused = daemon
        .wait_metric(10, "metaserve_http_connections_dropped_total", &[("reason", "request_too_large")], |n| {
            n >= CLIENTS as f64
        })
        .await;
    assert_eq!(refused, CLIENTS as f64);
    // Unbounded, the heads would have cost CLIENTS × HEAD = 200 MB.
    let grown_mib = daemon.peak_rss_kib().saturating_sub(peak_before) / 1024;
    println!("peak RSS grew by {grown_mib} MiB for {CLIENTS} heads of {} KiB", HEAD / 1024);
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    drop(held);
    daemon.wait_metric(10, "metaserve_http_connections", &[], |n| n == SCRAPE).await;
}

/// Whether the daemon closed `stream` (after it sent a whole request)
/// without answering it.
async fn closed_unanswered(stream: &mut tokio::net::TcpStream) -> bool {
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: metaserve\r\n\r\n").await;
    // Well inside the header timeout: closed at accept, not for silence.
    within("a refused connection closed", TIMEOUT_BOUND, read_until_closed(stream)).await.is_empty()
}

/// Polls `GET /healthz` from `127.0.0.<host_n>` until it is answered.
async fn served_eventually(daemon: &Daemon, host_n: u8) {
    within(&format!("127.0.0.{host_n} served again"), WAIT, async {
        while http_get_from(host_n, daemon.http_addr(), "/healthz").await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_refuses_beyond_it_while_other_ips_are_served() {
    let daemon = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--http-header-timeout",
        "120s",
        "--http-max-connections-per-ip",
        "8",
    ])
    .await;
    let addr = daemon.http_addr();
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tcp_from(2, addr).await);
    }
    daemon.wait_metric(9, "metaserve_http_connections", &[], |n| n == 8.0 + SCRAPE).await;
    for _ in 0..3 {
        let mut ninth = tcp_from(2, addr).await;
        assert!(closed_unanswered(&mut ninth).await, "a ninth connection from 127.0.0.2 is refused");
    }
    // Another address is served meanwhile.
    assert_eq!(http_get_from(3, addr, "/healthz").await, Some((200, b"ok\n".to_vec())));
    let text = daemon.http_metrics_from(9).await;
    assert_eq!(
        metric(&text, "metaserve_http_connections_refused_total", &[("reason", "max_connections_per_ip")]),
        Some(3.0)
    );
    assert_eq!(metric(&text, "metaserve_http_connections_refused_total", &[("reason", "max_connections")]), Some(0.0));
    // Below its cap again, 127.0.0.2 is served.
    held.truncate(7);
    served_eventually(&daemon, 2).await;
    assert!(daemon.log().contains("refusing HTTP connections"), "the first refusal is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_refuses_beyond_it() {
    let daemon =
        Daemon::start(&["--http", "127.0.0.1:0", "--http-header-timeout", "120s", "--http-max-connections", "4"]).await;
    let addr = daemon.http_addr();
    let mut held = Vec::new();
    for host in 2..=4 {
        held.push(tcp_from(host, addr).await);
    }
    daemon.wait_metric(9, "metaserve_http_connections", &[], |n| n == 3.0 + SCRAPE).await;
    held.push(tcp_from(5, addr).await);
    for host in [6, 7] {
        let mut over = tcp_from(host, addr).await;
        assert!(closed_unanswered(&mut over).await, "a fifth connection is refused, from any address");
    }
    held.truncate(3);
    served_eventually(&daemon, 6).await;
    let refused = daemon
        .wait_metric(9, "metaserve_http_connections_refused_total", &[("reason", "max_connections")], |n| n >= 2.0)
        .await;
    assert!(refused >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let daemon = Daemon::start(&[
        "--http",
        "127.0.0.1:0",
        "--http-idle-timeout",
        "1s",
        "--http-header-timeout",
        "120s",
        "--update-interval",
        "100ms",
    ])
    .await;
    let endpoint = daemon.endpoint(2);
    let mut publishers = Vec::new();
    for i in 0..16 {
        let blob = blob(&format!("server {i} "), 8000);
        publishers.push(TestPublisher::start(&daemon, &endpoint, options("big", i), blob).await);
    }
    let (_conn, mut list) = start_browser(&daemon, &daemon.endpoint(3), "big").await;
    wait_synced(&mut list, "all 16 listed", |l| listing(l).len() == 16).await;

    // 100 pipelined requests for a 300 KB list: 30 MB of responses, far more
    // than the sockets buffer; the client reads none of it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind((metaserve_tests::host(4), 0).into()).unwrap();
    let mut stalled = within("connect", WAIT, socket.connect(daemon.http_addr())).await.unwrap();
    let request = "GET /v1/namespaces/big/servers HTTP/1.1\r\nHost: metaserve\r\n\r\n".repeat(100);
    stalled.write_all(request.as_bytes()).await.unwrap();

    let idle = daemon
        .wait_metric(5, "metaserve_http_connections_dropped_total", &[("reason", "idle_timeout")], |n| n >= 1.0)
        .await;
    assert_eq!(idle, 1.0);
    daemon.wait_metric(5, "metaserve_http_connections", &[], |n| n == SCRAPE).await;
    drop(stalled);
}

/// Publishers whose blobs change every 10 ms: the namespace's revision moves
/// all the time.
struct Churn {
    stop: Arc<AtomicBool>,
    /// Returns the publishers, still connected.
    task: tokio::task::JoinHandle<Vec<TestPublisher>>,
}

impl Churn {
    fn start(publishers: Vec<TestPublisher>) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    for (i, publisher) in publishers.iter().enumerate() {
                        publisher.try_set(blob(&format!("server {i} beat {n} "), 6000));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                publishers
            })
        };
        Churn { stop, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_of_a_changing_list_share_one_build_per_second() {
    const PUBLISHERS: usize = 32;
    const CLIENTS: usize = 16;
    let daemon = Daemon::start(&["--http", "127.0.0.1:0", "--heartbeat-interval", "1ms"]).await;
    let endpoints = [daemon.endpoint(2), daemon.endpoint(3)];
    let mut publishers = Vec::new();
    for i in 0..PUBLISHERS {
        let first = blob(&format!("server {i} beat 0 "), 6000);
        publishers.push(TestPublisher::start(&daemon, &endpoints[i % 2], options("hot", i), first).await);
    }
    let churn = Churn::start(publishers);
    let url = daemon.http_url("/v1/namespaces/hot/servers");
    within("all publishers listed over HTTP", WAIT, async {
        loop {
            let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
            let list: Value = serde_json::from_slice(&body).unwrap();
            if list["servers"].as_array().unwrap().len() == PUBLISHERS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    let builds = |text: &str| metric(text, "metaserve_http_list_builds_total", &[]).unwrap();
    let started = Instant::now();
    let builds_before = builds(&daemon.http_metrics_from(9).await);
    let requests = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (url, requests) = (url.clone(), requests.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let until = Instant::now() + Duration::from_secs(3);
            let mut revisions = Vec::new();
            while Instant::now() < until {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let etag = response.headers()["etag"].to_str().unwrap().to_owned();
                let list: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                // The ETag names the revision the body shows.
                let expected = format!("\"{}-{}\"", list["epoch"].as_str().unwrap(), list["revision"]);
                assert_eq!(etag, expected);
                let servers = list["servers"].as_array().unwrap();
                assert_eq!(servers.len(), PUBLISHERS);
                let newest = servers.iter().map(|s| s["revision"].as_u64().unwrap()).max().unwrap();
                assert!(newest <= list["revision"].as_u64().unwrap());
                revisions.push(list["revision"].as_u64().unwrap());
                requests.fetch_add(1, Ordering::Relaxed);
            }
            revisions
        }));
    }
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(within("a download loop", WAIT, client).await.unwrap());
    }
    let builds_during = builds(&daemon.http_metrics_from(9).await) - builds_before;
    let elapsed = started.elapsed();
    let requests = requests.load(Ordering::Relaxed);
    seen.sort_unstable();
    seen.dedup();
    println!("{requests} downloads in {elapsed:?}: {builds_during} builds, {} distinct revisions", seen.len());
    // A list this large is rebuilt at most once per second (max-age), however
    // many ask: the first build of the window, then one per second.
    let bound = elapsed.as_secs_f64().floor() + 1.0;
    assert!(builds_during <= bound, "{builds_during} builds in {elapsed:?}");
    assert!(requests as f64 >= CLIENTS as f64, "every client downloaded");
    assert!(seen.len() as f64 <= builds_during + 1.0, "every body served came from a build");

    // Once the list stops changing, a body a second old is replaced: the
    // list shows the namespace's current revision, and its ETag answers 304.
    churn.stop.store(true, Ordering::Relaxed);
    let _publishers = within("the churn stopping", WAIT, churn.task).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = reqwest::get(&url).await.unwrap();
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let list: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let namespaces: Value = reqwest::get(daemon.http_url("/v1/namespaces")).await.unwrap().json().await.unwrap();
    assert_eq!(list["revision"], namespaces["namespaces"][0]["revision"]);
    let again = reqwest::Client::new().get(&url).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
}

/// How many of the daemon's threads are named `name`, from
/// `/proc/<pid>/task/*/comm`.
fn threads_named(daemon: &Daemon, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == name)
        .count()
}

/// Waits until `n` of the daemon's threads are HTTP threads (a new thread
/// takes its name a moment after it starts).
async fn wait_http_threads(daemon: &Daemon, n: usize) {
    within(&format!("{n} metaserve-http threads"), WAIT, async {
        while threads_named(daemon, "metaserve-http") != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_runs_on_threads_of_its_own() {
    let default = Daemon::start(&["--http", "127.0.0.1:0", "--threads", "2"]).await;
    wait_http_threads(&default, 1).await;
    let two = Daemon::start(&["--http", "127.0.0.1:0", "--http-threads", "2"]).await;
    wait_http_threads(&two, 2).await;
    // Serving does not add any.
    assert_eq!(http_get_from(2, two.http_addr(), "/healthz").await, Some((200, b"ok\n".to_vec())));
    assert_eq!(threads_named(&two, "metaserve-http"), 2);
    let none = Daemon::start(&[]).await;
    assert_eq!(threads_named(&none, "metaserve-http"), 0, "no HTTP runtime without --http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_http_connections_and_exits_zero() {
    let mut daemon = Daemon::start(&["--http", "127.0.0.1:0"]).await;
    let addr = daemon.http_addr();
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tcp_from(2, addr).await);
    }
    // A kept-alive connection that has been served.
    let mut kept = tcp_from(3, addr).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: metaserve\r\n\r\n").await.unwrap();
    daemon.wait_metric(4, "metaserve_http_connections", &[], |n| n == 11.0 + SCRAPE).await;
    let status = daemon.terminate(WAIT).await;
    assert!(status.success(), "exit status {status}:\n{}", daemon.log());
    for stream in idle.iter_mut().chain([&mut kept]) {
        within("the connection closed", WAIT, read_until_closed(stream)).await;
    }
    assert!(!daemon.log().contains("still running after"), "{}", daemon.log());
}
