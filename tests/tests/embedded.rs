//! The runtime-free embedding end to end: a `Publisher` and a `Browser`
//! driven by `metaserve_embedded::QuicSession` (quinn-proto on blocking std
//! UDP sockets, hand-written loops like the crate's examples) in plain std
//! threads, against the real daemon. Only the daemon harness uses tokio, to
//! start and watch the child process; the client threads run no runtime.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaserve_embedded::quinn_proto::ConnectionError;
use metaserve_embedded::tls::{self, Fingerprint};
use metaserve_embedded::{QuicSession, SessionError};
use metaserve_proto::{Browser, BrowserConfig, BrowserEvent, Publisher, PublisherConfig, PublisherEvent};
use metaserve_tests::{Daemon, WAIT};

const NAMESPACE: &str = "embedded";
/// The longest a client thread may run in total.
const THREAD_LIMIT: Duration = Duration::from_secs(90);
/// How long a step may block: the loops also poll a command channel, as a
/// game loop polls its input once per frame.
const FRAME: Duration = Duration::from_millis(20);
/// How long `goodbye` waits for the server's `NO_ERROR` close.
const LINGER: Duration = Duration::from_secs(5);

enum Command {
    Set(Bytes),
    Leave,
}

fn no_runtime_here() {
    assert!(tokio::runtime::Handle::try_current().is_err(), "a client thread runs inside a tokio runtime");
}

/// The publisher example's loop, fed by a channel instead of a game. Sends
/// the entry's address once the server accepted it; returns how the
/// connection ended after the Goodbye.
fn run_publisher(
    server: SocketAddr,
    fingerprint: Fingerprint,
    first: Bytes,
    commands: Receiver<Command>,
    accepted: Sender<SocketAddr>,
) -> Result<Option<ConnectionError>, SessionError> {
    no_runtime_here();
    let limit = Instant::now() + THREAD_LIMIT;
    let mut session = QuicSession::connect(server, "localhost", tls::client_config_pinned(fingerprint).unwrap())?;
    let mut publisher = Publisher::new(PublisherConfig::new(NAMESPACE), Instant::now());
    publisher.set_heartbeat(first, Instant::now()).unwrap();
    loop {
        assert!(Instant::now() < limit, "the publisher thread ran too long");
        session.step(&mut publisher, Some(Instant::now() + FRAME))?;
        while let Some(event) = publisher.poll_event() {
            match event {
                PublisherEvent::Accepted(welcome) => {
                    let _ = accepted.send(welcome.publisher.expect("a publisher's Welcome has its address").address);
                }
                PublisherEvent::Rejected { code, reason } => panic!("publisher rejected: {code}: {reason}"),
            }
        }
        match commands.try_recv() {
            Ok(Command::Set(blob)) => publisher.set_heartbeat(blob, Instant::now()).unwrap(),
            Ok(Command::Leave) | Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
    }
    session.goodbye(&mut publisher, LINGER)?;
    Ok(session.close_reason().cloned())
}

/// The browser example's loop: sends the list at every `Synced` until told
/// to stop; returns how the connection ended after the Goodbye.
fn run_browser(
    server: SocketAddr,
    fingerprint: Fingerprint,
    namespace: &str,
    lists: Sender<BTreeMap<SocketAddr, Bytes>>,
    stop: Receiver<()>,
) -> Result<Option<ConnectionError>, SessionError> {
    no_runtime_here();
    let limit = Instant::now() + THREAD_LIMIT;
    let mut session = QuicSession::connect(server, "localhost", tls::client_config_pinned(fingerprint).unwrap())?;
    let mut browser = Browser::new(BrowserConfig::new(namespace));
    while matches!(stop.try_recv(), Err(TryRecvError::Empty)) {
        assert!(Instant::now() < limit, "the browser thread ran too long");
        session.step(&mut browser, Some(Instant::now() + FRAME))?;
        while let Some(event) = browser.poll_event() {
            match event {
                BrowserEvent::Synced { .. } => {
                    let list = browser.servers().map(|s| (s.address, s.blob.clone())).collect();
                    let _ = lists.send(list);
                }
                BrowserEvent::Rejected { code, reason } => panic!("browser rejected: {code}: {reason}"),
                BrowserEvent::Upsert(_) | BrowserEvent::Remove(_) | BrowserEvent::Reset => {}
            }
        }
    }
    session.goodbye(&mut browser, LINGER)?;
    Ok(session.close_reason().cloned())
}

/// Reads lists until one satisfies `done`; fails after [`WAIT`].
fn wait_list(
    lists: &Receiver<BTreeMap<SocketAddr, Bytes>>,
    what: &str,
    done: impl Fn(&BTreeMap<SocketAddr, Bytes>) -> bool,
) {
    let limit = Instant::now() + WAIT;
    let mut last = None;
    loop {
        match lists.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(list) if done(&list) => return,
            Ok(list) => last = Some(list),
            Err(RecvTimeoutError::Timeout) => {
                panic!("timed out after {WAIT:?} waiting for {what}; last list: {last:?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("the browser thread ended while waiting for {what}"),
        }
    }
}

/// Asserts that the server closed the connection with `NO_ERROR`, reason `goodbye`.
fn assert_goodbye(who: &str, outcome: Result<Option<ConnectionError>, SessionError>) {
    match outcome {
        Ok(Some(ConnectionError::ApplicationClosed(close))) => {
            assert_eq!(close.error_code.into_inner(), 0, "{who}: closed with {close}");
            assert_eq!(&close.reason[..], b"goodbye", "{who}: closed with {close}");
        }
        other => panic!("{who}: expected the server's NO_ERROR close after Goodbye, got {other:?}"),
    }
}

fn scenario(server: SocketAddr, fingerprint: Fingerprint) {
    let (commands, publisher_commands) = mpsc::channel();
    let (accepted_tx, accepted) = mpsc::channel();
    let publisher = thread::spawn(move || {
        run_publisher(server, fingerprint, Bytes::from_static(b"embedded v0"), publisher_commands, accepted_tx)
    });
    let address = accepted.recv_timeout(WAIT).expect("the embedded publisher was not accepted in time");

    let (lists_tx, lists) = mpsc::channel();
    let (stop, browser_stop) = mpsc::channel();
    let browser = thread::spawn(move || run_browser(server, fingerprint, NAMESPACE, lists_tx, browser_stop));

    // The entry and its blob, at a Synced point.
    wait_list(&lists, "the publisher's entry", |l| l.get(&address).is_some_and(|b| b == "embedded v0"));
    // An update.
    commands.send(Command::Set(Bytes::from_static(b"embedded v1"))).unwrap();
    wait_list(&lists, "the updated blob", |l| l.get(&address).is_some_and(|b| b == "embedded v1"));
    // Goodbye: the entry goes at once (the TTL is 30 s, far beyond WAIT).
    commands.send(Command::Leave).unwrap();
    assert_goodbye("publisher", publisher.join().expect("the publisher thread panicked"));
    wait_list(&lists, "the entry removed after Goodbye", |l| !l.contains_key(&address));

    stop.send(()).unwrap();
    assert_goodbye("browser", browser.join().expect("the browser thread panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn embedded_publisher_and_browser_without_a_runtime() {
    let daemon = Daemon::start(&["--heartbeat-interval", "200ms", "--update-interval", "200ms"]).await;
    let (server, fingerprint) = (daemon.addr(), Fingerprint(daemon.fingerprint().0));
    // The harness's runtime only watches the daemon; the clients run on
    // plain std threads started from a blocking context.
    tokio::task::spawn_blocking(move || scenario(server, fingerprint)).await.expect("the scenario failed");
}

/// Twelve publishers stepped without blocking from one thread, as a game
/// loop steps its sessions once per frame, and a snapshot of ~96 KB: more
/// datagrams than one step takes in, and many reads into the browser.
fn large_snapshot(server: SocketAddr, fingerprint: Fingerprint) {
    const PUBLISHERS: usize = 12;
    const BLOB: usize = 8000;
    let blob = |i: usize| metaserve_tests::blob(&format!("server {i} "), BLOB);
    let (done, publishers_done) = mpsc::channel::<()>();
    let (addresses_tx, addresses) = mpsc::channel();
    let publishers = thread::spawn(move || {
        no_runtime_here();
        let limit = Instant::now() + THREAD_LIMIT;
        let mut sessions = Vec::new();
        for i in 0..PUBLISHERS {
            let config = tls::client_config_pinned(fingerprint).unwrap();
            let session = QuicSession::connect(server, "localhost", config).unwrap();
            let mut publisher = Publisher::new(PublisherConfig::new("large"), Instant::now());
            publisher.set_heartbeat(blob(i), Instant::now()).unwrap();
            sessions.push((session, publisher));
        }
        // The frame loop: every session stepped once per frame, never blocking.
        while matches!(publishers_done.try_recv(), Err(TryRecvError::Empty)) {
            assert!(Instant::now() < limit, "the publishers' thread ran too long");
            for (i, (session, publisher)) in sessions.iter_mut().enumerate() {
                session.step(publisher, Some(Instant::now())).unwrap();
                while let Some(event) = publisher.poll_event() {
                    match event {
                        PublisherEvent::Accepted(welcome) => {
                            addresses_tx.send((welcome.publisher.unwrap().address, blob(i))).unwrap()
                        }
                        PublisherEvent::Rejected { code, reason } => panic!("publisher rejected: {code}: {reason}"),
                    }
                }
            }
            thread::sleep(Duration::from_millis(5));
        }
        sessions
            .into_iter()
            .map(|(mut session, mut publisher)| session.goodbye(&mut publisher, LINGER))
            .collect::<Vec<_>>()
    });
    let expected: BTreeMap<SocketAddr, Bytes> =
        (0..PUBLISHERS).map(|_| addresses.recv_timeout(WAIT).expect("a publisher was not accepted in time")).collect();

    let (lists_tx, lists) = mpsc::channel();
    let (stop, browser_stop) = mpsc::channel();
    let browser = thread::spawn(move || run_browser(server, fingerprint, "large", lists_tx, browser_stop));
    wait_list(&lists, "all twelve large entries", |l| *l == expected);
    done.send(()).unwrap();
    for outcome in publishers.join().expect("the publishers' thread panicked") {
        outcome.expect("goodbye");
    }
    wait_list(&lists, "every large entry removed", BTreeMap::is_empty);
    stop.send(()).unwrap();
    assert_goodbye("browser", browser.join().expect("the browser thread panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn embedded_frame_loop_and_a_large_snapshot() {
    let daemon = Daemon::start(&["--heartbeat-interval", "200ms", "--update-interval", "200ms"]).await;
    let (server, fingerprint) = (daemon.addr(), Fingerprint(daemon.fingerprint().0));
    tokio::task::spawn_blocking(move || large_snapshot(server, fingerprint)).await.expect("the scenario failed");
}
