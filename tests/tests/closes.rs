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

/// Every way a client's own bytes can make the daemon end its session gets
/// the same treatment: the final frames on the stream (a Welcome where the
/// session had been accepted, then the Reject), the stream's end, then the
/// close with the Reject's code and reason. A Goodbye gets no Reject: the
/// stream ends and the close is NO_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_close_carries_its_reject() {
    let daemon = Daemon::start(&["--handshake-timeout", "1s"]).await;
    let endpoint = daemon.endpoint(2);
    let publisher = encode(&hello(Role::Publisher, "game", b""));
    let browser = encode(&hello(Role::Browser, "game", b""));
    let then = |first: &[u8], rest: &[u8]| [first, rest].concat();
    // (what, bytes, whether the stream is then finished, the Welcome is due, the close code)
    let cases: Vec<(&str, Vec<u8>, bool, bool, ErrorCode)> = vec![
        ("Hello of version 2", vec![0x01, 0x03, 0x02, 0x05, 0x00], false, false, ErrorCode::UNSUPPORTED_VERSION),
        ("Hello with role 5", vec![0x01, 0x02, 0x01, 0x05], false, false, ErrorCode::PROTOCOL_VIOLATION),
        (
            "Hello with an empty namespace",
            encode(&hello(Role::Browser, "", b"")),
            false,
            false,
            ErrorCode::INVALID_NAMESPACE,
        ),
        (
            "Hello with a 300-byte token",
            encode(&hello(Role::Publisher, "game", &[b't'; 300])),
            false,
            false,
            ErrorCode::UNAUTHORIZED,
        ),
        ("Heartbeat before Hello", vec![0x04, 0x01, 0x00], false, false, ErrorCode::PROTOCOL_VIOLATION),
        ("a 9000-byte frame header", vec![0x04, 0x63, 0x28], false, false, ErrorCode::FRAME_TOO_LARGE),
        ("a Heartbeat from a browser", then(&browser, &[0x04, 0x01, 0x00]), false, true, ErrorCode::PROTOCOL_VIOLATION),
        ("a second Hello", then(&publisher, &publisher), false, true, ErrorCode::PROTOCOL_VIOLATION),
        (
            "a stream finished inside a frame",
            then(&publisher, &[0x04, 0x05, 0x03]),
            true,
            true,
            ErrorCode::PROTOCOL_VIOLATION,
        ),
        ("half a Hello, then silence", publisher[..3].to_vec(), false, false, ErrorCode::HANDSHAKE_TIMEOUT),
        ("Goodbye", then(&publisher, &[0x05, 0x00]), true, true, ErrorCode::NO_ERROR),
    ];
    let mut rejects = 0;
    for (what, bytes, finish, welcome, code) in &cases {
        let mut client = RawClient::connect(&daemon, &endpoint).await;
        client.write(bytes).await;
        if *finish {
            client.send.finish().unwrap();
        }
        let frames = read_to_end(&mut client).await;
        let (closed, reason) = close_code(&client.connection).await;
        assert_eq!(closed, *code, "{what}: close code ({reason})");
        if what.contains("inside a frame") {
            // N counts the unfinished frame's bytes, its header's included.
            assert_eq!(reason, "session stream ended inside a frame (3 bytes of it received)");
        }
        let mut expected = Vec::new();
        if *welcome {
            expected.push(Got::Welcome);
        }
        if *code != ErrorCode::NO_ERROR {
            expected.push(Got::Reject(*code, reason.clone()));
            rejects += 1;
        }
        assert_eq!(frames, expected, "{what}: frames before the close");
    }
    assert_eq!(rejects, cases.len() - 1);
}

/// A client that stops reading the session stream (STOP_SENDING) in the
/// same breath as a refused Hello still gets the registry's close code and
/// reason, not a bare code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_the_stream_still_gets_the_close_code() {
    let daemon = Daemon::start(&[]).await;
    let endpoint = daemon.endpoint(2);
    for _ in 0..5 {
        let mut client = RawClient::connect(&daemon, &endpoint).await;
        client.recv.stop(0u32.into()).unwrap();
        client.write(&[0x01, 0x03, 0x02, 0x05, 0x00]).await;
        let (code, reason) = close_code(&client.connection).await;
        assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION, "{reason}");
    }
}
