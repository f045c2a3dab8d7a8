//! Slowloris against the operator HTTP API, as the "Survive a hostile
//! Internet" finding measured it: (1) C idle TCP connections (2,000, from 32
//! loopback addresses) that never send a byte, held for up to 15 s: how many
//! the daemon accepted, refused at once, and still holds at the end; (2) H
//! connections (1,000) each sending an unfinished 400 KB request head: the
//! daemon's resident memory while they are held. Default flags only, so
//! `METASERVE_DAEMON=<binary>` can run an older build. Bounded: about 40 s.
//!
//! ```sh
//! cargo build --release -p metaserve-daemon -p metaserve-tests --examples
//! ./target/release/examples/http_slowloris [idle connections] [big heads]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use metaserve_tests::{metric, tcp_from, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the daemon has closed `stream` (read end of stream or a reset),
/// without waiting.
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

async fn counter(daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> String {
    let text = reqwest::get(daemon.http_url("/metrics")).await.unwrap().text().await.unwrap();
    metric(&text, name, labels).map_or_else(|| "-".to_owned(), |v| format!("{v}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let idle: usize = args.next().map_or(2000, |a| a.parse().expect("idle connections"));
    let heads: usize = args.next().map_or(1000, |a| a.parse().expect("big heads"));

    // (1) Idle connections, 1/32 from each of 32 addresses.
    let daemon = Daemon::start(&["--http", "127.0.0.1:0"]).await;
    let addr = daemon.http_addr();
    let mut held = Vec::new();
    for i in 0..idle {
        held.push(tcp_from(2 + (i % 32) as u8, addr).await);
    }
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused_at_once = held.iter().filter(|s| is_closed(s)).count();
    let mut last_close = Duration::ZERO;
    let mut open = idle - refused_at_once;
    while open > 0 && opened.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now_open = held.iter().filter(|s| !is_closed(s)).count();
        if now_open < open {
            last_close = opened.elapsed();
        }
        open = now_open;
    }
    println!(
        "idle: {idle} connections; {refused_at_once} closed within 0.5 s (refused), {} accepted; \
         still open after {:.0} s: {open}; last one closed after {:.1} s",
        idle - refused_at_once,
        opened.elapsed().as_secs_f64(),
        last_close.as_secs_f64()
    );
    drop(held);
    for (name, labels) in [
        ("metaserve_http_connections_refused_total", [("reason", "max_connections")]),
        ("metaserve_http_connections_refused_total", [("reason", "max_connections_per_ip")]),
        ("metaserve_http_connections_dropped_total", [("reason", "header_timeout")]),
    ] {
        println!("  {name}{labels:?} = {}", counter(&daemon, name, &labels).await);
    }
    drop(daemon);

    // (2) Unfinished 400 KB request heads, from 16 addresses.
    let daemon = Daemon::start(&["--http", "127.0.0.1:0"]).await;
    let addr = daemon.http_addr();
    let rss_before = daemon.rss_kib();
    let padding = vec![b'a'; 400 * 1024];
    let mut held = Vec::new();
    let started = Instant::now();
    for i in 0..heads {
        let mut stream = tcp_from(2 + (i % 16) as u8, addr).await;
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: metaserve\r\nX-Big: ").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&padding)).await;
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_held = daemon.rss_kib();
    let answered_431 = {
        let mut n = 0;
        for stream in &mut held {
            let mut buf = [0u8; 12];
            if let Ok(Ok(12)) = tokio::time::timeout(Duration::from_millis(10), stream.read_exact(&mut buf)).await {
                n += usize::from(&buf == b"HTTP/1.1 431");
            }
        }
        n
    };
    let closed = held.iter().filter(|s| is_closed(s)).count();
    println!(
        "big heads: {heads} × 400 KiB unfinished in {:.1} s; daemon RSS {} MiB before, {} MiB while held \
         (+{} MiB), peak {} MiB; {answered_431} answered 431, {closed} closed by the daemon",
        started.elapsed().as_secs_f64(),
        rss_before / 1024,
        rss_held / 1024,
        rss_held.saturating_sub(rss_before) / 1024,
        daemon.peak_rss_kib() / 1024,
    );
    drop(held);
    println!(
        "  metaserve_http_connections_dropped_total{{reason=request_too_large}} = {}",
        counter(&daemon, "metaserve_http_connections_dropped_total", &[("reason", "request_too_large")]).await
    );
}
