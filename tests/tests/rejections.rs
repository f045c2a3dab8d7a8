//! Refused publishers get the documented error code, and a well-behaved
//! publisher and browser connected at the same time are not disturbed.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::Bytes;
use metaserve_proto::frame::{Frame, FrameType, Role};
use metaserve_tests::{
    assert_rejected, blob, close_code, hello, listing, start_browser, wait_synced, Bystander, Daemon, RawClient,
    TestPublisher,
};
use metaserve_tokio::{ClientError, ErrorCode, PublishOptions};

fn with_token(namespace: &str, token: &str) -> PublishOptions {
    let mut options = PublishOptions::new(namespace);
    options.token = Some(Bytes::copy_from_slice(token.as_bytes()));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_unauthorized() {
    let daemon = Daemon::start_with_config(
        &["--update-interval", "200ms"],
        Some("[namespaces.private]\ntokens = [\"sesame\"]\n"),
    )
    .await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "public").await;

    // The right token is accepted.
    let endpoints = [daemon.endpoint(4), daemon.endpoint(5), daemon.endpoint(6)];
    let good = TestPublisher::start(&daemon, &endpoints[0], with_token("private", "sesame"), "good").await;
    let (_conn, mut private) = start_browser(&daemon, &endpoints[1], "private").await;
    wait_synced(&mut private, "the authorized publisher", |l| listing(l).len() == 1).await;

    // A wrong token, and none at all, are refused.
    for options in [with_token("private", "open sesame"), PublishOptions::new("private")] {
        let mut intruder = TestPublisher::start(&daemon, &endpoints[2], options, "intruder").await;
        assert_rejected(intruder.outcome().await, ErrorCode::UNAUTHORIZED);
        let (code, _) = close_code(&intruder.connection).await;
        assert_eq!(code, ErrorCode::UNAUTHORIZED);
    }

    bystander.check("after the refused publishers").await;
    good.set("good, still").await;
    wait_synced(&mut private, "the authorized publisher's update", |l| {
        listing(l).into_iter().collect::<Vec<_>>() == [(good.address, Bytes::from_static(b"good, still"))]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heartbeat_is_blob_too_large() {
    let daemon = Daemon::start(&["--max-blob-size", "100", "--update-interval", "200ms"]).await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;

    // The real publisher: a 200-byte first heartbeat rides with the Hello,
    // before the Welcome told it the limit, so the server refuses it.
    let endpoint = daemon.endpoint(4);
    let mut big = TestPublisher::start(&daemon, &endpoint, PublishOptions::new("game"), blob("big", 200)).await;
    assert_rejected(big.outcome().await, ErrorCode::BLOB_TOO_LARGE);
    let (code, reason) = close_code(&big.connection).await;
    assert_eq!(code, ErrorCode::BLOB_TOO_LARGE);
    assert!(reason.contains("200") && reason.contains("100"), "{reason}");

    // Once it knows the limit, the real publisher refuses locally.
    let endpoint = daemon.endpoint(5);
    let mut careful = TestPublisher::start(&daemon, &endpoint, PublishOptions::new("game"), blob("fits", 100)).await;
    let (_conn, mut list) = start_browser(&daemon, &daemon.endpoint(6), "game").await;
    let careful_address = careful.address;
    wait_synced(&mut list, "the 100-byte heartbeat", |l| l.server(&careful_address).is_some()).await;
    careful.set(blob("too big", 200)).await;
    match careful.outcome().await {
        Err(ClientError::Protocol(e)) => {
            assert_eq!(e.code(), ErrorCode::BLOB_TOO_LARGE, "{e}")
        }
        other => panic!("expected a local BLOB_TOO_LARGE, got {other:?}"),
    }

    // By hand: a publisher accepted with a blob of exactly the maximum,
    // then 200 bytes: closed, and its entry removed.
    let raw_endpoint = daemon.endpoint(7);
    let raw_address = raw_endpoint.local_addr().unwrap();
    let mut raw = RawClient::connect(&daemon, &raw_endpoint).await;
    raw.send(&hello(Role::Publisher, "game", b"")).await;
    raw.send(&Frame::Heartbeat { blob: &blob("max", 100) }).await;
    raw.read_until(FrameType::WELCOME).await;
    wait_synced(&mut list, "the raw publisher listed", |l| l.server(&raw_address).is_some()).await;
    raw.send(&Frame::Heartbeat { blob: &blob("over", 200) }).await;
    let (code, reason) = close_code(&raw.connection).await;
    assert_eq!(code, ErrorCode::BLOB_TOO_LARGE, "{reason}");
    wait_synced(&mut list, "the raw publisher removed", |l| l.server(&raw_address).is_none()).await;

    bystander.check("after the oversized heartbeats").await;
    let bystander_address = bystander.address();
    wait_synced(&mut list, "the bystander, from another browser", |l| l.server(&bystander_address).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_publisher_from_one_ip_is_ip_limit() {
    let daemon = Daemon::start(&["--max-publishers-per-ip", "3", "--update-interval", "200ms"]).await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;
    let (_conn, mut list) = start_browser(&daemon, &daemon.endpoint(9), "game").await;

    // Three publishers from 127.0.0.4, each on its own port.
    let endpoints: Vec<_> = (0..5).map(|_| daemon.endpoint(4)).collect();
    let mut three = Vec::new();
    for (i, endpoint) in endpoints.iter().take(3).enumerate() {
        three.push(TestPublisher::start(&daemon, endpoint, PublishOptions::new("game"), format!("host4 #{i}")).await);
    }
    let addresses: Vec<_> = three.iter().map(|p| p.address).collect();
    wait_synced(&mut list, "three publishers of 127.0.0.4", |l| addresses.iter().all(|a| l.server(a).is_some())).await;

    // The fourth from the same IP is refused, in any namespace.
    for namespace in ["game", "other"] {
        let mut fourth = TestPublisher::start(&daemon, &endpoints[3], PublishOptions::new(namespace), "host4 #4").await;
        assert_rejected(fourth.outcome().await, ErrorCode::IP_LIMIT);
        let (code, reason) = close_code(&fourth.connection).await;
        assert_eq!(code, ErrorCode::IP_LIMIT);
        assert!(reason.contains("127.0.0.4"), "{reason}");
    }

    // Other hosts are not affected; browsers from 127.0.0.4 neither.
    let elsewhere = daemon.endpoint(5);
    let other_host = TestPublisher::start(&daemon, &elsewhere, PublishOptions::new("game"), "host5").await;
    let (_conn4, mut list4) = start_browser(&daemon, &endpoints[4], "game").await;
    let other_address = other_host.address;
    wait_synced(&mut list4, "all publishers, from a browser on 127.0.0.4", |l| {
        l.servers().len() == 5 && l.server(&other_address).is_some()
    })
    .await;

    // A publisher leaving frees its slot: publish returns once the daemon
    // has processed the Goodbye and closed the connection.
    three.pop().unwrap().finish().await.expect("Goodbye");
    let retry = TestPublisher::start(&daemon, &endpoints[3], PublishOptions::new("game"), "host4 again").await;
    let retry_address = retry.address;
    wait_synced(&mut list, "the publisher in the freed slot", |l| l.server(&retry_address).is_some()).await;

    bystander.check("after the IP limit").await;
    for p in &three {
        assert!(list.server(&p.address).is_some(), "{} lost its entry", p.address);
    }
}
