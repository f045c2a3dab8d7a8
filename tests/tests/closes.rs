//! The final-frame contract on the wire, against the real daemon: when the
//! server ends a session it writes the frames still due (a Welcome, then
//! the Reject with the close's code and reason), finishes its stream, and
//! only then closes the connection with the same code and reason. The test
//! reads the raw stream bytes and decodes them itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use metaserve_proto::frame::{Frame, Role};
use metaserve_proto::{DecodeError, FrameDecoder};
use metaserve_tests::{close_code, encode, hello, within, Daemon, RawClient, WAIT};
use metaserve_tokio::ErrorCode;

/// A frame as the client decoded it.
#[derive(Debug, PartialEq)]
enum Got {
    Welcome,
    Reject(ErrorCode, String),
    Other(String),
}

/// Every frame on the session stream until the daemon finishes it.
async fn read_to_end(client: &mut RawClient) -> Vec<Got> {
    let bytes = within("the daemon to finish its stream", WAIT, client.recv.read_to_end(1 << 20))
        .await
        .expect("the daemon finished its stream before closing the connection");
    let mut frames = Vec::new();
    FrameDecoder::new(1 << 20)
        .decode(&bytes, |frame| {
            frames.push(match frame {
                Frame::Welcome(_) => Got::Welcome,
                Frame::Reject(reject) => Got::Reject(reject.code, reject.reason.to_owned()),
                other => Got::Other(format!("{:?}", other.frame_type())),
            });
            Ok::<_, DecodeError>(())
        })
        .expect("decodable frames");
    frames
}

/// Hello and an oversized heartbeat in one write: the session is accepted,
/// then ended. The client receives the Welcome, then the Reject, then the
/// stream's end, then the close, all with BLOB_TOO_LARGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_heartbeat_gets_its_welcome_and_reject_before_the_close() {
    let daemon = Daemon::start(&[]).await;
    let endpoint = daemon.endpoint(2);
    let mut client = RawClient::connect(&daemon, &endpoint).await;
    let blob = vec![b'x'; 8_200];
    let mut bytes = encode(&hello(Role::Publisher, "game", b""));
    bytes.extend(encode(&Frame::Heartbeat { blob: &blob }));
    client.write(&bytes).await;
    let reason = "heartbeat of 8200 bytes exceeds the maximum of 8192".to_owned();
    assert_eq!(read_to_end(&mut client).await, [Got::Welcome, Got::Reject(ErrorCode::BLOB_TOO_LARGE, reason.clone())]);
    assert_eq!(close_code(&client.connection).await, (ErrorCode::BLOB_TOO_LARGE, reason));
}

/// A refused Hello (a namespace that requires a token) gets its Reject,
/// and no Welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hello_gets_its_reject_before_the_close() {
    let daemon = Daemon::start_with_config(&[], Some("[namespaces.private]\ntokens = [\"t\"]\n")).await;
    let endpoint = daemon.endpoint(2);
    let mut client = RawClient::connect(&daemon, &endpoint).await;
    client.send(&hello(Role::Publisher, "private", b"wrong")).await;
    let reason = "missing or invalid token for this namespace".to_owned();
    assert_eq!(read_to_end(&mut client).await, [Got::Reject(ErrorCode::UNAUTHORIZED, reason.clone())]);
    assert_eq!(close_code(&client.connection).await, (ErrorCode::UNAUTHORIZED, reason));
}

/// A session ended from outside its connection (here: the daemon shutting
/// down) gets its Reject too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_every_session_its_reject() {
    let mut daemon = Daemon::start(&[]).await;
    let endpoint = daemon.endpoint(2);
    let mut client = RawClient::connect(&daemon, &endpoint).await;
    client.send(&hello(Role::Browser, "game", b"")).await;
    client.read_until(metaserve_proto::frame::FrameType::SYNCED).await;
    daemon.signal("TERM");
    let reason = "server shutting down".to_owned();
    assert_eq!(read_to_end(&mut client).await, [Got::Reject(ErrorCode::SHUTTING_DOWN, reason.clone())]);
    assert_eq!(close_code(&client.connection).await, (ErrorCode::SHUTTING_DOWN, reason));
    assert!(daemon.terminate(WAIT).await.success());
}
