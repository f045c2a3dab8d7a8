//! Clients that break the protocol are closed with the documented code,
//! while the daemon keeps serving a well-behaved publisher and browser.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use metaserve_proto::frame::{Frame, FrameType, Hello, Role};
use metaserve_tests::{close_code, hello, listing, start_browser, wait_synced, Bystander, Daemon, RawClient};
use metaserve_tokio::ErrorCode;

/// A Hello whose payload ends inside a varint: `type 0x01, length 3`, then
/// `0xff`, whose two high bits announce an 8-byte varint of which only
/// three bytes follow. A malformed frame: PROTOCOL_VIOLATION.
const MALFORMED_HELLO: &[u8] = &[0x01, 0x03, 0xff, 0xff, 0xff];

/// Sixteen `0xff` bytes: frame type and payload length are both 8-byte
/// varints of 2^62 - 1, far above the daemon's maximum frame size (the
/// length is checked as soon as the header is complete): FRAME_TOO_LARGE.
const HUGE_LENGTH: &[u8] = &[0xff; 16];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_closed_with_their_codes() {
    let daemon = Daemon::start(&["--handshake-timeout", "1s", "--update-interval", "200ms"]).await;
    let mut bystander = Bystander::start(&daemon, 2, 3, "game").await;
    let endpoint = daemon.endpoint(4);

    // Garbage instead of a Hello.
    let mut garbage = RawClient::connect(&daemon, &endpoint).await;
    garbage.write(MALFORMED_HELLO).await;
    let (code, reason) = close_code(&garbage.connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION, "{reason}");

    let mut huge = RawClient::connect(&daemon, &endpoint).await;
    huge.write(HUGE_LENGTH).await;
    let (code, reason) = close_code(&huge.connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "{reason}");

    // A well-formed frame before the Hello.
    let mut early = RawClient::connect(&daemon, &endpoint).await;
    early.send(&Frame::Heartbeat { blob: b"who am I" }).await;
    let (code, reason) = close_code(&early.connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION, "{reason}");

    // A Hello of another protocol version; one with a control character in
    // its namespace.
    let mut future = RawClient::connect(&daemon, &endpoint).await;
    future
        .send(&Frame::Hello(Hello {
            version: 2,
            role: Role::Browser,
            namespace: "game",
            token: b"",
            declared_port: None,
            resume: None,
        }))
        .await;
    let (code, reason) = close_code(&future.connection).await;
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION, "{reason}");
    let mut control = RawClient::connect(&daemon, &endpoint).await;
    control.send(&hello(Role::Publisher, "ga\nme", b"")).await;
    let (code, reason) = close_code(&control.connection).await;
    assert_eq!(code, ErrorCode::INVALID_NAMESPACE, "{reason}");

    bystander.check("after the malformed input").await;

    // No Hello at all: one client opens no stream, one sends a first byte
    // of a Hello and stops. Both are closed after the 1 s handshake timeout.
    let started = Instant::now();
    let idle = daemon.connect(&endpoint).await;
    let mut partial = RawClient::connect(&daemon, &endpoint).await;
    partial.write(&[0x01]).await;
    for connection in [&idle, &partial.connection] {
        let (code, reason) = close_code(connection).await;
        assert_eq!(code, ErrorCode::HANDSHAKE_TIMEOUT, "{reason}");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the timeout");

    // A second stream after the Hello: a publisher, whose entry then goes.
    let raw_endpoint = daemon.endpoint(5);
    let raw_address = raw_endpoint.local_addr().unwrap();
    let (_conn, mut list) = start_browser(&daemon, &daemon.endpoint(6), "game").await;
    let mut two_streams = RawClient::connect(&daemon, &raw_endpoint).await;
    two_streams.send(&hello(Role::Publisher, "game", b"")).await;
    two_streams.send(&Frame::Heartbeat { blob: b"two streams" }).await;
    two_streams.read_until(FrameType::WELCOME).await;
    wait_synced(&mut list, "the two-stream publisher listed", |l| l.server(&raw_address).is_some()).await;
    let (mut extra, _extra_recv) = two_streams.connection.open_bi().await.unwrap();
    extra.write_all(&metaserve_tests::encode(&Frame::Goodbye)).await.unwrap();
    let (code, reason) = close_code(&two_streams.connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION, "{reason}");
    wait_synced(&mut list, "the two-stream publisher removed", |l| l.server(&raw_address).is_none()).await;

    // And a browser doing the same, with a unidirectional stream.
    let mut uni = RawClient::connect(&daemon, &raw_endpoint).await;
    uni.send(&hello(Role::Browser, "game", b"")).await;
    uni.read_until(FrameType::SYNCED).await;
    let mut extra = uni.connection.open_uni().await.unwrap();
    extra.write_all(b"\x05\x00").await.unwrap();
    let (code, reason) = close_code(&uni.connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION, "{reason}");

    // The daemon still serves: the bystander's updates arrive, and the
    // other browser lists exactly the bystander.
    bystander.check("after every misbehaving client").await;
    let bystander_address = bystander.address();
    wait_synced(&mut list, "only the bystander listed", |l| {
        listing(l).keys().copied().collect::<Vec<_>>() == [bystander_address]
    })
    .await;
}
