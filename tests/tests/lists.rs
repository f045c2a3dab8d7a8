//! The live list end to end: 50 publishers in two namespaces, browsers that
//! see exactly their namespace, updates, a Goodbye, and a silent publisher
//! removed after the entry TTL.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaserve_proto::frame::{Frame, FrameType, Role};
use metaserve_tests::{close_code, hello, listing, start_browser, wait_synced, Daemon, RawClient, TestPublisher};
use metaserve_tokio::{ErrorCode, PublishOptions};

const NAMESPACES: [&str; 2] = ["alpha", "beta"];
const PUBLISHERS: usize = 50;
/// Publishers spread over 127.0.0.2 ..= 127.0.0.6: ten per host, within the
/// default limit of 16 publishers per IP.
const PUBLISHER_HOSTS: usize = 5;

fn beat(ns: usize, i: usize, version: u32) -> Bytes {
    Bytes::from(format!("{} server {i} version {version}", NAMESPACES[ns]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_publishers_two_namespaces_updates_goodbye_and_ttl() {
    let daemon =
        Daemon::start(&["--entry-ttl", "2s", "--heartbeat-interval", "200ms", "--update-interval", "200ms"]).await;

    // One endpoint (UDP socket) per publisher: entries keyed by the
    // observed address.
    let mut endpoints = Vec::new();
    let mut publishers: Vec<(usize, TestPublisher)> = Vec::new();
    let mut expected: [BTreeMap<SocketAddr, Bytes>; 2] = Default::default();
    for i in 0..PUBLISHERS {
        let ns = i % 2;
        let endpoint = daemon.endpoint(2 + (i % PUBLISHER_HOSTS) as u8);
        let publisher =
            TestPublisher::start(&daemon, &endpoint, PublishOptions::new(NAMESPACES[ns]), beat(ns, i, 0)).await;
        expected[ns].insert(publisher.address, beat(ns, i, 0));
        publishers.push((ns, publisher));
        endpoints.push(endpoint);
    }
    assert_eq!(expected[0].len(), 25);
    assert_eq!(expected[1].len(), 25);

    // Two browsers of alpha (different hosts), one of beta.
    let browser_endpoints = [daemon.endpoint(7), daemon.endpoint(8), daemon.endpoint(9)];
    let (_c0, mut alpha) = start_browser(&daemon, &browser_endpoints[0], "alpha").await;
    let (_c1, mut alpha2) = start_browser(&daemon, &browser_endpoints[1], "alpha").await;
    let (_c2, mut beta) = start_browser(&daemon, &browser_endpoints[2], "beta").await;
    for (list, ns) in [(&mut alpha, 0), (&mut alpha2, 0), (&mut beta, 1)] {
        wait_synced(list, "the 25 publishers of the namespace", |l| listing(l) == expected[ns]).await;
        assert_eq!(list.servers().len(), 25);
        assert!(list.servers().all(|s| !s.port_declared), "observed ports are not declared");
    }

    // Updates: every third publisher changes its heartbeat.
    for (i, (ns, publisher)) in publishers.iter().enumerate() {
        if i % 3 == 0 {
            publisher.set(beat(*ns, i, 1)).await;
            expected[*ns].insert(publisher.address, beat(*ns, i, 1));
        }
    }
    for (list, ns) in [(&mut alpha, 0), (&mut alpha2, 0), (&mut beta, 1)] {
        wait_synced(list, "the updated heartbeats", |l| listing(l) == expected[ns]).await;
    }

    // Goodbye: the heartbeat stream of one alpha publisher ends.
    let (ns, leaving) = publishers.remove(0);
    assert_eq!(ns, 0);
    let gone = leaving.address;
    leaving.finish().await.expect("publish ends cleanly after Goodbye");
    expected[0].remove(&gone);
    for (list, ns) in [(&mut alpha, 0), (&mut alpha2, 0), (&mut beta, 1)] {
        wait_synced(list, "the departed publisher removed", |l| listing(l) == expected[ns]).await;
    }

    // A silent publisher: Hello and one Heartbeat by hand, then nothing
    // (the real Publisher would refresh its entry on its own).
    let silent_endpoint = daemon.endpoint(10);
    let silent_address = silent_endpoint.local_addr().unwrap();
    let mut silent = RawClient::connect(&daemon, &silent_endpoint).await;
    let mut hello_and_beat = metaserve_tests::encode(&hello(Role::Publisher, "alpha", b""));
    hello_and_beat.extend(metaserve_tests::encode(&Frame::Heartbeat { blob: b"silent" }));
    silent.write(&hello_and_beat).await;
    let last_heartbeat = Instant::now();
    assert_eq!(silent.read_until(FrameType::WELCOME).await, [FrameType::WELCOME]);
    let mut with_silent = expected[0].clone();
    with_silent.insert(silent_address, Bytes::from_static(b"silent"));
    for list in [&mut alpha, &mut alpha2] {
        wait_synced(list, "the silent publisher listed", |l| listing(l) == with_silent).await;
    }

    // After the TTL (2 s) it disappears from every browser, while the real
    // publishers, refreshing on their own, stay listed.
    for list in [&mut alpha, &mut alpha2] {
        wait_synced(list, "the silent publisher expired", |l| listing(l) == expected[0]).await;
    }
    let (code, reason) = close_code(&silent.connection).await;
    let silence = last_heartbeat.elapsed();
    assert_eq!(code, ErrorCode::HEARTBEAT_TIMEOUT, "{reason}");
    assert!(silence >= Duration::from_millis(1900), "expired after {silence:?}, before the 2 s TTL");
    wait_synced(&mut beta, "beta unchanged", |l| listing(l) == expected[1]).await;

    // Everyone else is still publishing, and still delivered.
    for (i, (ns, publisher)) in publishers.iter().enumerate() {
        assert!(!publisher.is_finished(), "publisher {i} stopped");
        publisher.set(beat(*ns, i, 2)).await;
        expected[*ns].insert(publisher.address, beat(*ns, i, 2));
    }
    for (list, ns) in [(&mut alpha, 0), (&mut alpha2, 0), (&mut beta, 1)] {
        wait_synced(list, "the final heartbeats", |l| listing(l) == expected[ns]).await;
    }
}
