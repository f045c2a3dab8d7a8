//! Cross-runtime interop: the one driver loop of `metaserve-quinn`, run by
//! tokio, async-std and smol, talking to each other over real quinn on
//! loopback.
//!
//! - async-std publishers and browsers against the real (tokio) daemon;
//! - tokio publishers and browsers against a `MetaServer` on async-std's
//!   runtime, served under `async_std::task::block_on` in a thread of its own;
//! - the same on smol's runtime (`metaserve_quinn::smol`, feature `smol`) under smol;
//! - in each: namespaces kept apart, updates, a Goodbye and an abrupt drop
//!   on one runtime seen as removals by browsers on the other, and a server
//!   shutdown seen as `SHUTTING_DOWN` by the clients of the other runtime;
//!   the servers of the other runtimes also expire a silent publisher
//!   (their registry timers run on that runtime).
//!
//! The non-tokio side never runs inside a tokio context: its endpoints are
//! bound, its connections made, its heartbeats published and its browses
//! polled by tasks of its own runtime (threads where any use of tokio would
//! panic). The test bodies, on tokio, only bound every wait.
//!
//! Which runtime a helper runs on is a value: [`Runtime::quinn`], the
//! runtime crate's `runtime()`, passed to `metaserve-quinn`'s functions, as
//! any program that picks its runtime at run time would.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt as _, StreamExt as _};
use metaserve_proto::frame::{Frame, Role};
use metaserve_tests::{
    assert_rejected, browse_end, close_code, encode, hello, host, listing, wait_synced, within, Daemon, TestPublisher,
    WAIT,
};
use metaserve_tokio::tls::{self, Fingerprint};
use metaserve_tokio::{
    Browse, BrowseOptions, BrowserEvent, ClientError, ErrorCode, MetaServerHandle, PublishOptions, RegistryConfig,
};
use quinn::{Connection, Endpoint};

/// The list as address → blob, as [`listing`] returns it.
type Listing = BTreeMap<SocketAddr, Bytes>;

/// A runtime other than tokio.
#[derive(Debug, Clone, Copy)]
enum Runtime {
    /// `metaserve-async-std`.
    AsyncStd,
    /// `metaserve_quinn::smol`.
    Smol,
}

/// A task of a [`Runtime`]; it yields the task's outcome, panic included.
enum Task<T> {
    AsyncStd(async_std::task::JoinHandle<std::thread::Result<T>>),
    Smol(smol::Task<std::thread::Result<T>>),
}

impl<T> Future for Task<T> {
    type Output = std::thread::Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Task::AsyncStd(task) => task.poll_unpin(cx),
            Task::Smol(task) => task.poll_unpin(cx),
        }
    }
}

impl<T> Task<T> {
    /// Cancels the task: its future is dropped mid-flight.
    async fn cancel(self) {
        match self {
            Task::AsyncStd(task) => drop(task.cancel().await),
            Task::Smol(task) => drop(task.cancel().await),
        }
    }
}

impl Runtime {
    /// Spawns `future` on this runtime's executor.
    fn spawn<T: Send + 'static>(self, future: impl Future<Output = T> + Send + 'static) -> Task<T> {
        let future = AssertUnwindSafe(future).catch_unwind();
        match self {
            Runtime::AsyncStd => Task::AsyncStd(async_std::task::spawn(future)),
            Runtime::Smol => Task::Smol(smol::spawn(future)),
        }
    }

    /// Runs `future` as a task of this runtime and awaits its output within
    /// [`WAIT`], re-raising its panic here.
    async fn run<T: Send + 'static>(self, what: &str, future: impl Future<Output = T> + Send + 'static) -> T {
        match within(what, WAIT, self.spawn(future)).await {
            Ok(output) => output,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Runs `future` to completion on the current thread, as a program on
    /// this runtime does in `main`.
    fn block_on<T>(self, future: impl Future<Output = T>) -> T {
        match self {
            Runtime::AsyncStd => async_std::task::block_on(future),
            Runtime::Smol => smol::block_on(future),
        }
    }

    /// This runtime as metaserve-quinn takes it: the one place that tells
    /// the runtime crates apart.
    fn quinn(self) -> Arc<dyn quinn::Runtime> {
        match self {
            Runtime::AsyncStd => metaserve_async_std::runtime(),
            Runtime::Smol => metaserve_quinn::smol::runtime(),
        }
    }

    /// Binds a client endpoint on `127.0.0.<host_n>` trusting `target`.
    async fn endpoint(self, target: Target, host_n: u8) -> Endpoint {
        let config = tls::client_config_pinned(target.fingerprint).unwrap();
        let addr = SocketAddr::new(host(host_n), 0);
        let bind = async move { metaserve_quinn::client_endpoint(self.quinn(), addr, config).unwrap() };
        self.run("binding an endpoint", bind).await
    }

    /// A QUIC connection to `target` from `endpoint`.
    async fn connect(self, target: Target, endpoint: &Endpoint) -> Connection {
        let endpoint = endpoint.clone();
        let connect = async move { endpoint.connect(target.addr, "localhost").unwrap().await };
        self.run("a QUIC handshake", connect).await.expect("QUIC handshake failed")
    }
}

/// A meta server to connect to.
#[derive(Debug, Clone, Copy)]
struct Target {
    addr: SocketAddr,
    fingerprint: Fingerprint,
}

impl Target {
    fn daemon(daemon: &Daemon) -> Target {
        Target { addr: daemon.addr(), fingerprint: daemon.fingerprint() }
    }

    /// A tokio client endpoint on `127.0.0.<host_n>` trusting this server.
    fn tokio_endpoint(&self, host_n: u8) -> Endpoint {
        let config = tls::client_config_pinned(self.fingerprint).unwrap();
        metaserve_tokio::client_endpoint(SocketAddr::new(host(host_n), 0), config).unwrap()
    }

    /// A tokio QUIC connection from `endpoint`.
    async fn tokio_connect(&self, endpoint: &Endpoint) -> Connection {
        within("a QUIC handshake", WAIT, endpoint.connect(self.addr, "localhost").unwrap()).await.unwrap()
    }

    /// A tokio publisher of `first` in `namespace`, from `endpoint`.
    async fn tokio_publisher(&self, endpoint: &Endpoint, namespace: &str, first: &str) -> TestPublisher {
        let connection = self.tokio_connect(endpoint).await;
        TestPublisher::on(connection, endpoint, PublishOptions::new(namespace), Bytes::from(first.to_owned()))
    }

    /// A tokio browse of `namespace`, from `endpoint`.
    async fn tokio_browser(&self, endpoint: &Endpoint, namespace: &str) -> (Connection, Browse) {
        let connection = self.tokio_connect(endpoint).await;
        let list = within("browse Welcome", WAIT, metaserve_tokio::browse(&connection, BrowseOptions::new(namespace)))
            .await
            .unwrap();
        (connection, list)
    }
}

/// A publisher on another runtime, fed by a channel (async-channel, which
/// belongs to no runtime).
struct OtherPublisher {
    /// The entry's address as browsers see it.
    address: SocketAddr,
    connection: Connection,
    tx: Option<async_std::channel::Sender<Bytes>>,
    task: Task<Result<(), ClientError>>,
}

impl OtherPublisher {
    async fn start(runtime: Runtime, target: Target, endpoint: &Endpoint, namespace: &str, first: &str) -> Self {
        let connection = runtime.connect(target, endpoint).await;
        let (tx, rx) = async_std::channel::bounded(8);
        tx.try_send(Bytes::from(first.to_owned())).unwrap();
        let (conn, options) = (connection.clone(), PublishOptions::new(namespace));
        let task = runtime.spawn(async move { metaserve_quinn::publish(runtime.quinn(), &conn, options, rx).await });
        let address = endpoint.local_addr().unwrap();
        OtherPublisher { address, connection, tx: Some(tx), task }
    }

    async fn set(&self, blob: &str) {
        let tx = self.tx.as_ref().unwrap();
        within("queueing a heartbeat", WAIT, tx.send(Bytes::from(blob.to_owned()))).await.unwrap();
    }

    /// Ends the heartbeat stream (Goodbye); returns what `publish` returned.
    async fn finish(mut self) -> Result<(), ClientError> {
        self.tx = None;
        self.outcome().await
    }

    /// Waits for `publish` to return, without ending the heartbeats.
    async fn outcome(self) -> Result<(), ClientError> {
        match within("publish to return", WAIT, self.task).await {
            Ok(outcome) => outcome,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Vanishes without a Goodbye: `publish` is dropped mid-flight and the
    /// connection with it (quinn finishes a dropped stream and closes a
    /// connection whose last handle is dropped, with code 0). The server
    /// removes the entry at once, without waiting for its TTL.
    async fn drop_abruptly(self) {
        within("cancelling publish", WAIT, self.task.cancel()).await;
        drop(self.connection);
    }
}

/// A browse on another runtime: polled only by that runtime's tasks.
struct OtherBrowser {
    runtime: Runtime,
    list: Option<Browse>,
    _connection: Connection,
}

impl OtherBrowser {
    async fn start(runtime: Runtime, target: Target, endpoint: &Endpoint, namespace: &str) -> Self {
        let connection = runtime.connect(target, endpoint).await;
        let (conn, options) = (connection.clone(), BrowseOptions::new(namespace));
        // Needs no runtime, but is polled by this one's task.
        let list =
            runtime.run("browse Welcome", async move { metaserve_quinn::browse(&conn, options).await }).await.unwrap();
        OtherBrowser { runtime, list: Some(list), _connection: connection }
    }

    /// Reads until, at a `Synced`, the list is exactly `expected`.
    async fn wait_for(&mut self, what: &str, expected: &Listing) {
        let mut list = self.list.take().expect("the browse was lost to an earlier failure");
        let (label, expected) = (what.to_owned(), expected.clone());
        let list = self
            .runtime
            .run(what, async move {
                until_synced(&mut list, &label, |l| listing(l) == expected).await;
                list
            })
            .await;
        self.list = Some(list);
    }

    /// Reads until the browse ends; returns the error it ended with.
    async fn end(&mut self) -> Option<ClientError> {
        let mut list = self.list.take().expect("the browse was lost to an earlier failure");
        self.runtime
            .run("the browse to end", async move {
                loop {
                    match list.next().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Some(e),
                        None => return None,
                    }
                }
            })
            .await
    }
}

/// The harness's `wait_synced` without its tokio timer, for tasks of other
/// runtimes; the caller bounds the wait.
async fn until_synced(list: &mut Browse, what: &str, mut done: impl FnMut(&Browse) -> bool) {
    if list.is_synced() && done(list) {
        return;
    }
    loop {
        match list.next().await {
            Some(Ok(BrowserEvent::Synced { .. })) if done(list) => return,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("browse failed while waiting for {what}: {e}"),
            None => panic!("browse ended while waiting for {what}"),
        }
    }
}

/// A meta server of another runtime, served by `block_on` in a thread of
/// its own, as the `main` of a program on that runtime would.
struct OtherServer {
    target: Target,
    handle: MetaServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherServer {
    fn start(runtime: Runtime, config: RegistryConfig) -> OtherServer {
        let cert = tls::DevCertificate::generate().unwrap();
        let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{runtime:?} meta server"))
            .spawn(move || {
                runtime.block_on(async move {
                    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
                    let endpoint = metaserve_quinn::server_endpoint(runtime.quinn(), addr, server_config).unwrap();
                    let server = metaserve_quinn::MetaServer::new(runtime.quinn(), config);
                    tx.send((endpoint.local_addr().unwrap(), server.handle())).unwrap();
                    server.serve(endpoint).await;
                })
            })
            .unwrap();
        let (addr, handle) = rx.recv_timeout(WAIT).expect("the meta server did not start");
        OtherServer { target: Target { addr, fingerprint: cert.fingerprint }, handle, thread: Some(thread) }
    }

    /// Shuts the server down and waits for `serve` to return (and its thread to end).
    async fn shutdown(mut self) {
        self.handle.shutdown();
        let thread = self.thread.take().unwrap();
        let joined = within("serve to return after shutdown", WAIT, tokio::task::spawn_blocking(|| thread.join()));
        if let Err(panic) = joined.await.unwrap() {
            resume_unwind(panic);
        }
    }
}

impl Drop for OtherServer {
    fn drop(&mut self) {
        // Lets the thread end even when a test fails half-way.
        self.handle.shutdown();
    }
}

/// The heartbeat and update intervals of the daemon and servers here: short,
/// so that every change shows quickly.
const FAST: Duration = Duration::from_millis(200);

/// Entries not refreshed for this long expire (publishers refresh every third of it).
const TTL: Duration = Duration::from_millis(1500);

fn fast() -> RegistryConfig {
    RegistryConfig { heartbeat_interval: FAST, update_interval: FAST, entry_ttl: TTL, ..RegistryConfig::default() }
}

fn entry(address: SocketAddr, blob: &str) -> (SocketAddr, Bytes) {
    (address, Bytes::from(blob.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_std_clients_on_the_tokio_daemon() {
    let mut daemon = Daemon::start(&["--heartbeat-interval", "200ms", "--update-interval", "200ms"]).await;
    let target = Target::daemon(&daemon);
    let on_std = Runtime::AsyncStd;

    // tokio: a publisher in alpha, a browser of each namespace.
    let tokio_endpoints = [daemon.endpoint(2), daemon.endpoint(3)];
    let tokio_alpha =
        TestPublisher::start(&daemon, &tokio_endpoints[0], PublishOptions::new("alpha"), "t-alpha 0").await;
    let (_c1, mut tokio_list_alpha) = target.tokio_browser(&tokio_endpoints[1], "alpha").await;
    let (_c2, mut tokio_list_beta) = target.tokio_browser(&tokio_endpoints[1], "beta").await;

    // async-std: a publisher in each namespace (one endpoint each: entries
    // are keyed by the observed address), a browser of alpha.
    let std_endpoints =
        [on_std.endpoint(target, 4).await, on_std.endpoint(target, 5).await, on_std.endpoint(target, 6).await];
    let std_alpha = OtherPublisher::start(on_std, target, &std_endpoints[0], "alpha", "s-alpha 0").await;
    let std_beta = OtherPublisher::start(on_std, target, &std_endpoints[1], "beta", "s-beta 0").await;
    let mut std_list = OtherBrowser::start(on_std, target, &std_endpoints[2], "alpha").await;

    // Each browser sees exactly its namespace, whichever runtime published.
    let mut alpha = Listing::from([entry(tokio_alpha.address, "t-alpha 0"), entry(std_alpha.address, "s-alpha 0")]);
    let mut beta = Listing::from([entry(std_beta.address, "s-beta 0")]);
    std_list.wait_for("alpha on async-std", &alpha).await;
    wait_synced(&mut tokio_list_alpha, "alpha on tokio", |l| listing(l) == alpha).await;
    wait_synced(&mut tokio_list_beta, "beta on tokio", |l| listing(l) == beta).await;

    // Updates cross over both ways.
    std_alpha.set("s-alpha 1").await;
    tokio_alpha.set("t-alpha 1").await;
    alpha.extend([entry(std_alpha.address, "s-alpha 1"), entry(tokio_alpha.address, "t-alpha 1")]);
    wait_synced(&mut tokio_list_alpha, "async-std's update on tokio", |l| listing(l) == alpha).await;
    std_list.wait_for("tokio's update on async-std", &alpha).await;

    // An async-std Goodbye: publish returns Ok and both browsers drop the entry.
    let gone = std_alpha.address;
    std_alpha.finish().await.expect("publish ends cleanly after Goodbye");
    alpha.remove(&gone);
    wait_synced(&mut tokio_list_alpha, "async-std's Goodbye on tokio", |l| listing(l) == alpha).await;
    std_list.wait_for("async-std's Goodbye on async-std", &alpha).await;

    // An async-std publisher vanishing without Goodbye, seen on tokio.
    std_beta.drop_abruptly().await;
    beta.clear();
    wait_synced(&mut tokio_list_beta, "async-std's abrupt drop on tokio", |l| listing(l) == beta).await;

    // A tokio publisher vanishing without Goodbye, seen on async-std.
    drop(tokio_alpha);
    alpha.clear();
    std_list.wait_for("tokio's abrupt drop on async-std", &alpha).await;

    // The tokio daemon's shutdown reaches the async-std browser.
    let status = daemon.terminate(WAIT).await;
    assert!(status.success(), "exit status {status}:\n{}", daemon.log());
    assert_rejected(std_list.end().await.map_or(Ok(()), Err), ErrorCode::SHUTTING_DOWN);
}

/// tokio clients of a meta server served by `runtime`, alongside clients of
/// that runtime.
async fn tokio_clients_on_another_runtime(runtime: Runtime) {
    let server = OtherServer::start(runtime, fast());
    let target = server.target;

    // tokio: a publisher in each namespace, a browser of each.
    let tokio_endpoints = [target.tokio_endpoint(2), target.tokio_endpoint(3), target.tokio_endpoint(4)];
    let tokio_alpha = target.tokio_publisher(&tokio_endpoints[0], "alpha", "t-alpha 0").await;
    let mut tokio_beta = target.tokio_publisher(&tokio_endpoints[1], "beta", "t-beta 0").await;
    let (_c1, mut tokio_list_alpha) = target.tokio_browser(&tokio_endpoints[2], "alpha").await;
    let (_c2, mut tokio_list_beta) = target.tokio_browser(&tokio_endpoints[2], "beta").await;

    // The server's runtime: a publisher and a browser of alpha.
    let endpoints = [runtime.endpoint(target, 5).await, runtime.endpoint(target, 6).await];
    let other_alpha = OtherPublisher::start(runtime, target, &endpoints[0], "alpha", "o-alpha 0").await;
    let mut other_list = OtherBrowser::start(runtime, target, &endpoints[1], "alpha").await;

    let mut alpha = Listing::from([entry(tokio_alpha.address, "t-alpha 0"), entry(other_alpha.address, "o-alpha 0")]);
    let beta = Listing::from([entry(tokio_beta.address, "t-beta 0")]);
    wait_synced(&mut tokio_list_alpha, "alpha on tokio", |l| listing(l) == alpha).await;
    wait_synced(&mut tokio_list_beta, "beta on tokio", |l| listing(l) == beta).await;
    other_list.wait_for("alpha on the server's runtime", &alpha).await;
    let served: Listing = server.handle.servers("alpha").into_iter().map(|s| (s.address, s.blob)).collect();
    assert_eq!(served, alpha, "the server's own view of alpha");
    assert_eq!(server.handle.stats().publishers, 3);

    // A silent publisher (Hello and one Heartbeat by hand, then nothing)
    // expires after the TTL, while the real ones, refreshing on their own,
    // stay: the registry's timers run on the server's runtime.
    let silent_endpoint = target.tokio_endpoint(7);
    let silent = target.tokio_connect(&silent_endpoint).await;
    let (mut send, _recv) = within("opening a stream", WAIT, silent.open_bi()).await.unwrap();
    let mut hello_and_beat = encode(&hello(Role::Publisher, "beta", b""));
    hello_and_beat.extend(encode(&Frame::Heartbeat { blob: b"silent" }));
    within("writing Hello", WAIT, send.write_all(&hello_and_beat)).await.unwrap();
    let mut with_silent = beta.clone();
    with_silent.insert(silent_endpoint.local_addr().unwrap(), Bytes::from_static(b"silent"));
    wait_synced(&mut tokio_list_beta, "the silent publisher listed", |l| listing(l) == with_silent).await;
    wait_synced(&mut tokio_list_beta, "the silent publisher expired", |l| listing(l) == beta).await;
    assert_eq!(close_code(&silent).await.0, ErrorCode::HEARTBEAT_TIMEOUT);
    other_list.wait_for("alpha still listed after the TTL", &alpha).await;

    // Updates cross over both ways.
    tokio_alpha.set("t-alpha 1").await;
    other_alpha.set("o-alpha 1").await;
    alpha.extend([entry(tokio_alpha.address, "t-alpha 1"), entry(other_alpha.address, "o-alpha 1")]);
    other_list.wait_for("tokio's update on the server's runtime", &alpha).await;
    wait_synced(&mut tokio_list_alpha, "the server's runtime's update on tokio", |l| listing(l) == alpha).await;

    // A tokio Goodbye, seen on the server's runtime.
    let gone = tokio_alpha.address;
    tokio_alpha.finish().await.expect("publish ends cleanly after Goodbye");
    alpha.remove(&gone);
    other_list.wait_for("tokio's Goodbye on the server's runtime", &alpha).await;

    // A publisher of the server's runtime vanishing without Goodbye, seen on tokio.
    other_alpha.drop_abruptly().await;
    alpha.clear();
    wait_synced(&mut tokio_list_alpha, "an abrupt drop on tokio", |l| listing(l) == alpha).await;
    other_list.wait_for("an abrupt drop on the server's runtime", &alpha).await;
    wait_synced(&mut tokio_list_beta, "beta unchanged", |l| listing(l) == beta).await;

    // Shutdown: serve returns, and every client, of either runtime, is told SHUTTING_DOWN.
    server.shutdown().await;
    for list in [&mut tokio_list_alpha, &mut tokio_list_beta] {
        assert_rejected(browse_end(list).await.map_or(Ok(()), Err), ErrorCode::SHUTTING_DOWN);
    }
    assert_rejected(tokio_beta.outcome().await, ErrorCode::SHUTTING_DOWN);
    assert_rejected(other_list.end().await.map_or(Ok(()), Err), ErrorCode::SHUTTING_DOWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_clients_on_an_async_std_meta_server() {
    tokio_clients_on_another_runtime(Runtime::AsyncStd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_clients_on_a_smol_meta_server() {
    tokio_clients_on_another_runtime(Runtime::Smol).await;
}

/// smol clients on the tokio daemon, next to async-std ones: the three
/// runtimes in one namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smol_and_async_std_clients_on_the_tokio_daemon() {
    let daemon = Daemon::start(&["--heartbeat-interval", "200ms", "--update-interval", "200ms"]).await;
    let target = Target::daemon(&daemon);
    let (on_std, on_smol) = (Runtime::AsyncStd, Runtime::Smol);

    let tokio_endpoint = daemon.endpoint(2);
    let tokio_pub = TestPublisher::start(&daemon, &tokio_endpoint, PublishOptions::new("game"), "tokio").await;
    let smol_endpoints = [on_smol.endpoint(target, 3).await, on_smol.endpoint(target, 4).await];
    let smol_pub = OtherPublisher::start(on_smol, target, &smol_endpoints[0], "game", "smol").await;
    let std_endpoint = on_std.endpoint(target, 5).await;
    let std_pub = OtherPublisher::start(on_std, target, &std_endpoint, "game", "async-std").await;
    let mut smol_list = OtherBrowser::start(on_smol, target, &smol_endpoints[1], "game").await;
    let (_c, mut tokio_list) = target.tokio_browser(&daemon.endpoint(6), "game").await;

    let mut game = Listing::from([
        entry(tokio_pub.address, "tokio"),
        entry(smol_pub.address, "smol"),
        entry(std_pub.address, "async-std"),
    ]);
    smol_list.wait_for("three runtimes on smol", &game).await;
    wait_synced(&mut tokio_list, "three runtimes on tokio", |l| listing(l) == game).await;

    let gone = smol_pub.address;
    smol_pub.finish().await.expect("publish ends cleanly after Goodbye");
    game.remove(&gone);
    wait_synced(&mut tokio_list, "smol's Goodbye on tokio", |l| listing(l) == game).await;
    let gone = std_pub.address;
    std_pub.drop_abruptly().await;
    game.remove(&gone);
    smol_list.wait_for("async-std's abrupt drop on smol", &game).await;
    wait_synced(&mut tokio_list, "async-std's abrupt drop on tokio", |l| listing(l) == game).await;
}
