//! The reconnect helpers over real quinn on loopback: an in-process
//! MetaServer that shuts down and starts again on the same port, a UDP
//! relay that goes silent, and the closes that must not be retried.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_tokio::{
    browse, client_endpoint, meta_server, publish, reconnect, server_endpoint, tls, Backoff, BrowseOptions,
    BrowserEvent, ClientError, ErrorCode, MetaServerHandle, PublishOptions, Reconnect, ReconnectEvent,
    ReconnectingBrowse, RegistryConfig, Retry,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest any step may take: generous, the machine may be busy.
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

fn config() -> RegistryConfig {
    RegistryConfig { update_interval: Duration::from_millis(50), ..RegistryConfig::default() }
}

/// Quick retries, so that the tests spend their time on behaviour.
fn fast() -> Backoff {
    Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200), ..Backoff::default() }
}

/// A meta server with a fixed development certificate, which can be
/// started again on the same port after a shutdown.
struct Server {
    cert: tls::DevCertificate,
    addr: SocketAddr,
    handle: MetaServerHandle,
    serving: JoinHandle<()>,
}

impl Server {
    async fn start(cert: tls::DevCertificate, addr: SocketAddr) -> Server {
        let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config()).unwrap();
        // The previous incarnation's socket may take a moment to be released.
        let endpoint = within("binding the server's port", async {
            loop {
                match server_endpoint(addr, server_config.clone()) {
                    Ok(endpoint) => return endpoint,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let addr = endpoint.local_addr().unwrap();
        let server = meta_server(config());
        let handle = server.handle();
        let serving = tokio::spawn(async move { server.serve(endpoint).await });
        Server { cert, addr, handle, serving }
    }

    /// Shuts down (every client gets SHUTTING_DOWN) and returns the
    /// certificate, to start again with.
    async fn shut_down(self) -> tls::DevCertificate {
        self.handle.shutdown();
        within("serve to return", self.serving).await.unwrap();
        self.cert
    }

    fn client(&self) -> quinn::Endpoint {
        let config = tls::client_config_pinned(self.cert.fingerprint).unwrap();
        client_endpoint("127.0.0.1:0".parse().unwrap(), config).unwrap()
    }

    fn reconnect(&self, endpoint: quinn::Endpoint) -> Reconnect {
        reconnect(endpoint, self.addr, "localhost").with_backoff(fast()).with_connect_timeout(Duration::from_secs(1))
    }
}

/// The retries a `Reconnect` reported to its callback.
#[derive(Clone, Default)]
struct Retries(Arc<Mutex<Vec<Retry>>>);

impl Retries {
    fn watch(&self, reconnect: Reconnect) -> Reconnect {
        let retries = self.clone();
        reconnect.on_retry(move |retry| retries.0.lock().unwrap().push(retry.clone()))
    }

    fn codes(&self) -> Vec<Option<ErrorCode>> {
        let retries = self.0.lock().unwrap();
        retries
            .iter()
            .map(|retry| match &retry.error {
                ClientError::Rejected { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn channel_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_core::Stream<Item = Bytes> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The next event of `list`, failing on an error or the end.
async fn next(list: &mut ReconnectingBrowse, what: &str) -> ReconnectEvent {
    match within(what, list.next()).await {
        Some(Ok(event)) => event,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// Reads `list` until, at a `Synced`, `done` holds; returns the events read.
async fn until_synced(
    list: &mut ReconnectingBrowse,
    what: &str,
    done: impl Fn(&ReconnectingBrowse) -> bool,
) -> Vec<ReconnectEvent> {
    let mut seen = Vec::new();
    loop {
        let event = next(list, what).await;
        let synced = matches!(event, ReconnectEvent::Browser(BrowserEvent::Synced { .. }));
        seen.push(event);
        if synced && done(list) {
            return seen;
        }
    }
}

fn blob_of(list: &ReconnectingBrowse) -> Vec<Bytes> {
    list.servers().map(|server| server.blob.clone()).collect()
}

#[tokio::test]
async fn publisher_and_browser_are_back_after_the_server_restarts() {
    let server = Server::start(tls::DevCertificate::generate().unwrap(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;

    // A game that publishes only on change: one blob, then nothing.
    let publisher_retries = Retries::default();
    let publisher = publisher_retries.watch(server.reconnect(server.client()));
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::from_static(b"map=one")).await.unwrap();
    let publishing =
        tokio::spawn(async move { publisher.publish(PublishOptions::new("game"), channel_stream(rx)).await });

    let mut list = server.reconnect(server.client()).browse(BrowseOptions::new("game"));
    assert_eq!(next(&mut list, "the first Welcome").await, ReconnectEvent::Connected { resume: None });
    until_synced(&mut list, "the publisher listed", |l| blob_of(l) == [Bytes::from_static(b"map=one")]).await;
    let resume = list.resume_point().expect("a synced list has a resume point");

    // The server shuts down: both clients are told SHUTTING_DOWN, and retry.
    let cert = server.shut_down().await;
    match next(&mut list, "the shutdown").await {
        ReconnectEvent::Retrying(retry) => {
            assert!(
                matches!(retry.error, ClientError::Rejected { code: ErrorCode::SHUTTING_DOWN, .. }),
                "{:?}",
                retry.error
            );
            assert_eq!(retry.failures, 1);
        }
        other => panic!("expected Retrying after the shutdown, got {other:?}"),
    }
    // While reconnecting, the last list stays readable (stale).
    assert_eq!(blob_of(&list), [Bytes::from_static(b"map=one")]);
    assert!(!list.is_synced() && !list.is_connected());

    // Started again on the same port, with a new epoch.
    let server = Server::start(cert, addr).await;
    assert_ne!(server.handle.epoch(), resume.epoch);
    let seen = within("the browser back", async {
        loop {
            match next(&mut list, "the browser back").await {
                ReconnectEvent::Connected { resume: presented } => break presented,
                ReconnectEvent::Retrying(_) => {}
                other => panic!("expected Retrying or Connected while the server was away, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(seen, Some(resume), "the reconnect presents the old resume point");
    // A new epoch cannot resume: Reset, then a fresh snapshot, with the
    // publisher's last blob listed again although the game sent nothing new.
    assert_eq!(next(&mut list, "the Reset").await, ReconnectEvent::Browser(BrowserEvent::Reset));
    until_synced(&mut list, "the publisher listed again", |l| blob_of(l) == [Bytes::from_static(b"map=one")]).await;
    assert_eq!(server.handle.servers("game").len(), 1);
    assert!(publisher_retries.codes().contains(&Some(ErrorCode::SHUTTING_DOWN)), "{:?}", publisher_retries.codes());

    // The same heartbeat stream carries on in the new session.
    tx.send(Bytes::from_static(b"map=two")).await.unwrap();
    until_synced(&mut list, "the next heartbeat", |l| blob_of(l) == [Bytes::from_static(b"map=two")]).await;

    // The stream ends: Goodbye, publish returns Ok, the entry goes at once.
    drop(tx);
    within("publish to return", publishing).await.unwrap().unwrap();
    until_synced(&mut list, "the removal", |l| l.servers().len() == 0).await;
    within("the browser's close", list.close()).await;
    server.shut_down().await;
}

/// A UDP relay between a client and a server that can go silent, dropping
/// everything in both directions, as a network outage does.
struct Relay {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = silent.clone();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if !quiet.load(Ordering::Relaxed) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if let (Some(client), false) = (client, quiet.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&down[..n], client).await;
                        }
                    }
                }
            }
        });
        Relay { addr, silent, task }
    }
}

#[tokio::test]
async fn a_browser_cut_off_resumes_and_receives_only_the_changes() {
    let server = Server::start(tls::DevCertificate::generate().unwrap(), "127.0.0.1:0".parse().unwrap()).await;
    // Three game servers, each from its own endpoint (its own address).
    let mut games = Vec::new();
    for name in ["a", "b", "c"] {
        let endpoint = server.client();
        let connection =
            within("a publisher's handshake", endpoint.connect(server.addr, "localhost").unwrap()).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        tx.send(Bytes::from(format!("{name}1"))).await.unwrap();
        let publishing =
            tokio::spawn(async move { publish(&connection, PublishOptions::new("game"), channel_stream(rx)).await });
        games.push((tx, publishing, endpoint));
    }

    // The browser reaches the server through the relay, and notices an
    // outage within a second (the server's 30 s would make a slow test).
    let relay = Relay::start(server.addr).await;
    let mut transport = tls::client_transport();
    transport
        .max_idle_timeout(Some(Duration::from_secs(1).try_into().unwrap()))
        .keep_alive_interval(Some(Duration::from_millis(200)));
    let mut client_config = tls::client_config_pinned(server.cert.fingerprint).unwrap();
    client_config.transport_config(Arc::new(transport));
    let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), client_config).unwrap();
    let meta = reconnect(endpoint, relay.addr, "localhost").with_backoff(fast());
    let mut list = meta.browse(BrowseOptions::new("game"));
    let three = [Bytes::from_static(b"a1"), Bytes::from_static(b"b1"), Bytes::from_static(b"c1")];
    until_synced(&mut list, "the three listed", |l| {
        let mut blobs = blob_of(l);
        blobs.sort();
        blobs == three
    })
    .await;
    let resume = list.resume_point().unwrap();

    // The network goes away; meanwhile b changes and c leaves.
    relay.silent.store(true, Ordering::Relaxed);
    let (c_tx, c_publishing, _) = games.pop().unwrap();
    drop(c_tx);
    within("c's Goodbye", c_publishing).await.unwrap().unwrap();
    games[1].0.send(Bytes::from_static(b"b2")).await.unwrap();
    match next(&mut list, "the outage noticed").await {
        ReconnectEvent::Retrying(retry) => assert!(retry.error.is_transient(), "{:?}", retry.error),
        other => panic!("expected Retrying during the outage, got {other:?}"),
    }
    relay.silent.store(false, Ordering::Relaxed);

    // Back: the session resumes from the last Synced, and receives exactly
    // what changed, not a snapshot.
    let presented = within("the reconnect", async {
        loop {
            match next(&mut list, "the reconnect").await {
                ReconnectEvent::Connected { resume } => break resume,
                ReconnectEvent::Retrying(_) => {}
                other => panic!("expected Retrying or Connected, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(presented, Some(resume));
    let changes = until_synced(&mut list, "the changes", |_| true).await;
    let b = games[1].2.local_addr().unwrap();
    let c_removed = changes.iter().any(|e| matches!(e, ReconnectEvent::Browser(BrowserEvent::Remove(_))));
    let b_updated = changes.iter().any(|e| {
        matches!(e, ReconnectEvent::Browser(BrowserEvent::Upsert(s)) if s.address.port() == b.port() && s.blob == "b2")
    });
    assert!(c_removed && b_updated, "expected b's update and c's removal, got {changes:?}");
    assert_eq!(changes.len(), 3, "only the two changes and Synced, got {changes:?}");
    assert!(matches!(changes[2], ReconnectEvent::Browser(BrowserEvent::Synced { snapshot: false, .. })));
    let mut blobs = blob_of(&list);
    blobs.sort();
    assert_eq!(blobs, [Bytes::from_static(b"a1"), Bytes::from_static(b"b2")]);
    assert!(list.is_synced());

    within("the browser's close", list.close()).await;
    relay.task.abort();
    server.shut_down().await;
}

#[tokio::test]
async fn final_closes_are_returned_not_retried() {
    let server = Server::start(tls::DevCertificate::generate().unwrap(), "127.0.0.1:0".parse().unwrap()).await;

    // A namespace that requires a publish token, and a publisher without one.
    server.handle.set_publish_tokens("private", ["sesame"]);
    let retries = Retries::default();
    let publisher = retries.watch(server.reconnect(server.client()));
    let heartbeats = futures_util::stream::iter([Bytes::from_static(b"x")]).chain(futures_util::stream::pending());
    match within("the rejection", publisher.publish(PublishOptions::new("private"), heartbeats)).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHORIZED),
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }

    // A browser of an invalid namespace: the error, then the end.
    let mut list = retries.watch(server.reconnect(server.client())).browse(BrowseOptions::new(""));
    match within("the browse's rejection", list.next()).await {
        Some(Err(ClientError::Rejected { code, .. })) => assert_eq!(code, ErrorCode::INVALID_NAMESPACE),
        other => panic!("expected INVALID_NAMESPACE, got {other:?}"),
    }
    assert!(within("the end of the browse", list.next()).await.is_none());

    // Two instances of one game server on one address: the newer takes the
    // entry over, and the older gives up instead of taking it back.
    let endpoint = server.client();
    let first = retries.watch(server.reconnect(endpoint.clone()));
    let older = tokio::spawn(async move {
        let heartbeats =
            futures_util::stream::iter([Bytes::from_static(b"older")]).chain(futures_util::stream::pending());
        first.publish(PublishOptions::new("game"), heartbeats).await
    });
    within("the older listed", async {
        while server.handle.servers("game").len() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let second = retries.watch(server.reconnect(endpoint));
    let newer = tokio::spawn(async move {
        let heartbeats =
            futures_util::stream::iter([Bytes::from_static(b"newer")]).chain(futures_util::stream::pending());
        second.publish(PublishOptions::new("game"), heartbeats).await
    });
    match within("the older's end", older).await.unwrap() {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::REPLACED),
        other => panic!("expected REPLACED, got {other:?}"),
    }
    within("the newer listed", async {
        while server.handle.servers("game").first().is_none_or(|s| s.blob != "newer") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(!newer.is_finished(), "the newer instance keeps publishing");
    assert_eq!(retries.count(), 0, "no final close was retried: {:?}", retries.codes());
    newer.abort();
    server.shut_down().await;
}

#[tokio::test]
async fn a_full_server_is_retried_until_there_is_room() {
    let config = RegistryConfig { max_browsers_per_ip: 1, ..config() };
    let cert = tls::DevCertificate::generate().unwrap();
    let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), server_config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = meta_server(config);
    let handle = server.handle();
    let serving = tokio::spawn(async move { server.serve(endpoint).await });
    let fx = Server { cert, addr, handle, serving };

    // One browser holds the only slot of 127.0.0.1.
    let endpoint = fx.client();
    let connection = within("a handshake", endpoint.connect(addr, "localhost").unwrap()).await.unwrap();
    let first = within("the first browse", browse(&connection, BrowseOptions::new("game"))).await.unwrap();

    let mut list = fx.reconnect(fx.client()).browse(BrowseOptions::new("game"));
    for failures in 1..=2 {
        match next(&mut list, "IP_LIMIT").await {
            ReconnectEvent::Retrying(retry) => {
                assert!(matches!(retry.error, ClientError::Rejected { code: ErrorCode::IP_LIMIT, .. }));
                assert_eq!(retry.failures, failures);
                assert!(retry.delay <= fast().nominal(failures - 1), "{retry:?}");
            }
            other => panic!("expected Retrying with IP_LIMIT, got {other:?}"),
        }
    }
    within("the first browser's Goodbye", first.close()).await.unwrap();
    connection.close(0u32.into(), b"done");
    let connected = within("the slot", async {
        loop {
            match next(&mut list, "the slot").await {
                ReconnectEvent::Connected { resume } => break resume,
                ReconnectEvent::Retrying(_) => {}
                other => panic!("expected Retrying or Connected, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(connected, None, "nothing to resume: no snapshot was ever complete");
    until_synced(&mut list, "the (empty) snapshot", |l| l.is_synced()).await;
    within("the browser's close", list.close()).await;
    fx.shut_down().await;
}

#[tokio::test]
async fn a_publisher_that_cannot_reach_the_server_stops_when_its_stream_ends() {
    // A port nobody answers on: each handshake times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cert = tls::DevCertificate::generate().unwrap();
    let endpoint =
        client_endpoint("127.0.0.1:0".parse().unwrap(), tls::client_config_pinned(cert.fingerprint).unwrap()).unwrap();
    let (retried, mut retries) = mpsc::unbounded_channel();
    let meta = reconnect(endpoint, silent.local_addr().unwrap(), "localhost")
        .with_backoff(fast())
        .with_connect_timeout(Duration::from_millis(100))
        .on_retry(move |retry| {
            let _ = retried.send(retry.clone());
        });
    let (tx, rx) = mpsc::channel(4);
    tx.send(Bytes::from_static(b"map=one")).await.unwrap();
    let publishing = tokio::spawn(async move { meta.publish(PublishOptions::new("game"), channel_stream(rx)).await });
    for _ in 0..2 {
        let retry = within("a retry", retries.recv()).await.unwrap();
        assert_eq!(retry.error, ClientError::ConnectTimeout(Duration::from_millis(100)));
    }
    // The game quits (Ctrl-C) while the meta server is unreachable.
    drop(tx);
    within("publish to return", publishing).await.unwrap().unwrap();
}
