//! What keeps a session alive, and what a change of path does to it
//! (PROTOCOL.md §2.4): the daemon sends keep-alives, so a client that sends
//! nothing stays connected; a publisher whose address changes mid-session
//! (QUIC connection migration) keeps the entry key of its session's start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metaserve_proto::frame::{FrameType, Role};
use metaserve_tests::{host, listing, start_browser, wait_synced, Daemon, RawClient, TestPublisher};
use metaserve_tokio::{tls, PublishOptions};

/// A browser whose QUIC stack sends no keep-alives and gives up after 12 s
/// of silence, in a namespace where nothing happens for 25 s, is still
/// connected and served afterwards: the daemon's keep-alives (every 10 s)
/// are what it hears. Without them it is gone at 12 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_sends_nothing_stays_connected() {
    let daemon = Daemon::start(&[]).await;
    let mut transport = tls::client_transport();
    transport.keep_alive_interval(None).max_idle_timeout(Some(Duration::from_secs(12).try_into().unwrap()));
    let mut config = daemon.client_config();
    config.transport_config(Arc::new(transport));
    let endpoint = metaserve_tokio::client_endpoint(SocketAddr::new(host(2), 0), config).unwrap();
    let mut client = RawClient::connect(&daemon, &endpoint).await;
    client.send(&metaserve_tests::hello(Role::Browser, "quiet", b"")).await;
    client.read_until(FrameType::SYNCED).await;

    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(client.connection.close_reason(), None, "the silent browser was dropped");

    let publisher_endpoint = daemon.endpoint(3);
    let _publisher = TestPublisher::start(&daemon, &publisher_endpoint, PublishOptions::new("quiet"), "news").await;
    let frames = client.read_until(FrameType::SYNCED).await;
    assert!(frames.contains(&FrameType::UPSERT), "the silent browser was not served: {frames:?}");
}

/// A publisher that moves to another address mid-session (here: its QUIC
/// endpoint rebinds to 127.0.0.5) stays listed under the key of its
/// session's start, and its later heartbeats update that entry; no entry
/// appears under the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_publisher_keeps_its_entry_key() {
    let daemon = Daemon::start(&[]).await;
    let publisher_endpoint = daemon.endpoint(4);
    let publisher = TestPublisher::start(&daemon, &publisher_endpoint, PublishOptions::new("game"), "before").await;
    let key = publisher.address;
    let browser_endpoint = daemon.endpoint(2);
    let (_connection, mut list) = start_browser(&daemon, &browser_endpoint, "game").await;
    wait_synced(&mut list, "the publisher's entry", |l| listing(l).get(&key).is_some_and(|b| &b[..] == b"before"))
        .await;

    let moved = std::net::UdpSocket::bind(SocketAddr::new(host(5), 0)).unwrap();
    publisher_endpoint.rebind(moved).unwrap();
    // The server sees the new path once the publisher sends on it.
    publisher.set("after").await;
    wait_synced(&mut list, "the heartbeat sent from the new address", |l| {
        listing(l).get(&key).is_some_and(|b| &b[..] == b"after")
    })
    .await;
    let entries = listing(&list);
    assert_eq!(entries.keys().copied().collect::<Vec<_>>(), [key], "entries after the migration");
    assert_eq!(publisher.connection.close_reason(), None);
}
