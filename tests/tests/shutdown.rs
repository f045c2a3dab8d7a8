//! Graceful shutdown: on SIGTERM the daemon closes every session with
//! SHUTTING_DOWN and exits with status 0.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use metaserve_proto::frame::Role;
use metaserve_tests::{
    assert_rejected, browse_end, close_code, hello, listing, start_browser, wait_synced, Daemon, RawClient,
    TestPublisher,
};
use metaserve_tokio::{ErrorCode, PublishOptions};

/// How long the daemon may take from SIGTERM to exit.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_shutting_down_and_exits_zero() {
    let mut daemon = Daemon::start(&["--update-interval", "200ms"]).await;
    let endpoints = [daemon.endpoint(2), daemon.endpoint(3), daemon.endpoint(4)];
    let mut publisher = TestPublisher::start(&daemon, &endpoints[0], PublishOptions::new("game"), "up").await;
    let (_conn, mut list) = start_browser(&daemon, &endpoints[1], "game").await;
    let (_conn2, mut other) = start_browser(&daemon, &endpoints[1], "other game").await;
    let address = publisher.address;
    wait_synced(&mut list, "the publisher listed", |l| listing(l).contains_key(&address)).await;
    // A connection still in its handshake is closed too.
    let pending = RawClient::connect(&daemon, &endpoints[2]).await;
    let mut browsing_raw = RawClient::connect(&daemon, &endpoints[2]).await;
    browsing_raw.send(&hello(Role::Browser, "game", b"")).await;

    let started = Instant::now();
    let status = daemon.terminate(EXIT_LIMIT).await;
    let took = started.elapsed();
    println!("daemon exited {took:?} after SIGTERM with {status}");
    assert!(status.success(), "exit status {status}:\n{}", daemon.log());

    for list in [&mut list, &mut other] {
        assert_rejected(browse_end(list).await.map_or(Ok(()), Err), ErrorCode::SHUTTING_DOWN);
    }
    assert_rejected(publisher.outcome().await, ErrorCode::SHUTTING_DOWN);
    for connection in [&pending.connection, &browsing_raw.connection] {
        assert_eq!(close_code(connection).await.0, ErrorCode::SHUTTING_DOWN);
    }
    assert!(daemon.log().contains("shutting down"), "{}", daemon.log());
}
