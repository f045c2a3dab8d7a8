//! The meta server's driver: one task per connection around a shared
//! [`Registry`], plus one task for the registry's timers.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metaserve_proto::{
    ConnectionHandle, Error, ErrorCode, Event, NamespaceInfo, Registry, RegistryConfig, Server, Stats,
};
use quinn::{Connection, ConnectionError, Endpoint, Incoming, Runtime, VarInt};

use crate::io::{race, Outbox, Timer, BUDGET};

/// The registry's timers are checked at least this often, so deadlines
/// created after the timer task went to sleep are never late by more.
const TIMER_TICK: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct State {
    registry: Registry,
    connections: HashMap<ConnectionHandle, Connection>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    shutting_down: AtomicBool,
    shutdown: event_listener::Event,
}

impl Shared {
    /// The registry never panics on input, so a poisoned lock can only come
    /// from a bug elsewhere in a task; the state itself is still consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn close(connection: &Connection, code: ErrorCode, reason: &str) {
    let code = VarInt::from_u64(code.0).unwrap_or(VarInt::MAX);
    connection.close(code, reason.as_bytes());
}

impl State {
    /// Acts on the registry's events: logs them and closes connections.
    fn drain_events(&mut self) {
        while let Some(event) = self.registry.poll_event() {
            match event {
                Event::Accepted { connection, role, namespace, address, resumed } => {
                    let peer = self.connections.get(&connection).map(Connection::remote_address);
                    tracing::info!(?peer, %role, %namespace, %address, resumed, "session accepted");
                }
                Event::Closed { connection, code, reason } => {
                    if let Some(conn) = self.connections.get(&connection) {
                        tracing::info!(peer = %conn.remote_address(), %code, %reason, "closing connection");
                        close(conn, code, &reason);
                    }
                }
            }
        }
    }
}

/// A meta server that can run in any async program on a quinn [`Endpoint`].
///
/// The runtime-specific crates (`metaserve-tokio`, `metaserve-async-std`)
/// wrap it with their runtime; use those unless you bring your own
/// [`quinn::Runtime`].
#[derive(Debug)]
pub struct MetaServer {
    shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
}

/// A cheap, cloneable handle to a running [`MetaServer`]: statistics, the
/// live lists, publish tokens, and graceful shutdown.
#[derive(Debug, Clone)]
pub struct MetaServerHandle {
    shared: Arc<Shared>,
}

impl MetaServer {
    /// A meta server with `config`, on `runtime`. Its registry epoch is
    /// taken from the clock, so browsers never resume into a different
    /// incarnation of the server.
    pub fn new(runtime: Arc<dyn Runtime>, config: RegistryConfig) -> Self {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let state = State { registry: Registry::new(config, epoch), connections: HashMap::new() };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            shutting_down: AtomicBool::new(false),
            shutdown: event_listener::Event::new(),
        });
        MetaServer { shared, runtime }
    }

    /// A handle for statistics and shutdown, usable while `serve` runs.
    pub fn handle(&self) -> MetaServerHandle {
        MetaServerHandle { shared: self.shared.clone() }
    }

    /// Serves connections arriving at `endpoint` until
    /// [`MetaServerHandle::shutdown`] is called or the endpoint is closed.
    /// On shutdown every connection is closed with `SHUTTING_DOWN`, and this
    /// returns once the peers have been told.
    pub async fn serve(&self, endpoint: Endpoint) {
        let shared = &self.shared;
        self.runtime.spawn(Box::pin(run_timers(shared.clone(), self.runtime.clone())));
        loop {
            let shutdown = shared.shutdown.listen();
            if shared.shutting_down.load(Ordering::Acquire) {
                break;
            }
            match race(endpoint.accept(), shutdown).await {
                Ok(Some(incoming)) => {
                    let task = run_connection(shared.clone(), self.runtime.clone(), incoming);
                    self.runtime.spawn(Box::pin(task));
                }
                Ok(None) | Err(()) => break,
            }
        }
        self.handle().shutdown();
        endpoint.close(
            VarInt::from_u64(ErrorCode::SHUTTING_DOWN.0).unwrap_or(VarInt::MAX),
            Error::ShuttingDown.to_string().as_bytes(),
        );
        endpoint.wait_idle().await;
    }
}

impl MetaServerHandle {
    /// Counts across the registry.
    pub fn stats(&self) -> Stats {
        self.shared.lock().registry.stats()
    }

    /// Every namespace with its counts.
    pub fn namespaces(&self) -> Vec<NamespaceInfo> {
        self.shared.lock().registry.namespaces().collect()
    }

    /// The live list of `namespace`, oldest change first.
    pub fn servers(&self, namespace: &str) -> Vec<Server> {
        self.shared.lock().registry.servers(namespace).collect()
    }

    /// Requires publishers of `namespace` to present one of `tokens`; an
    /// empty list lifts the requirement.
    pub fn set_publish_tokens<T: AsRef<[u8]>>(&self, namespace: &str, tokens: impl IntoIterator<Item = T>) {
        self.shared.lock().registry.set_publish_tokens(namespace, tokens);
    }

    /// Closes every connection with `SHUTTING_DOWN`, refuses new ones, and
    /// makes `serve` return.
    pub fn shutdown(&self) {
        if !self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            tracing::info!("shutting down");
        }
        let mut state = self.shared.lock();
        state.registry.shutdown();
        state.drain_events();
        drop(state);
        self.shared.shutdown.notify(usize::MAX);
    }
}

async fn run_timers(shared: Arc<Shared>, runtime: Arc<dyn Runtime>) {
    let mut timer = Timer::new(&*runtime);
    while !shared.shutting_down.load(Ordering::Acquire) {
        let now = runtime.now();
        let next = {
            let mut state = shared.lock();
            state.registry.handle_timeout(now);
            state.drain_events();
            state.registry.poll_timeout()
        };
        let tick = now + TIMER_TICK;
        timer.sleep_until(next.map_or(tick, |at| at.min(tick))).await;
    }
}

/// How a connection's session ended, for the log.
#[derive(Debug)]
enum End {
    /// The client finished its stream.
    Finished,
    /// The client opened a second stream.
    ExtraStream,
    Connection(ConnectionError),
    Stream(String),
}

async fn run_connection(shared: Arc<Shared>, runtime: Arc<dyn Runtime>, incoming: Incoming) {
    let peer = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::debug!(%peer, "QUIC handshake failed: {e}");
            return;
        }
    };
    let handle = {
        let mut state = shared.lock();
        match state.registry.accept(runtime.now(), peer) {
            Ok(handle) => {
                state.connections.insert(handle, connection.clone());
                handle
            }
            Err(e) => {
                tracing::info!(%peer, code = %e.code(), reason = %e, "connection refused");
                close(&connection, e.code(), &e.to_string());
                return;
            }
        }
    };
    tracing::debug!(%peer, %handle, "connected");
    let end = drive(&shared, &*runtime, &connection, handle).await;
    {
        let mut state = shared.lock();
        state.registry.remove(handle);
        state.connections.remove(&handle);
        state.drain_events();
    }
    log_end(peer, &end);
    match end {
        End::Finished => close(&connection, ErrorCode::NO_ERROR, "session stream finished"),
        End::ExtraStream => close(&connection, ErrorCode::PROTOCOL_VIOLATION, "a session uses exactly one stream"),
        End::Connection(_) | End::Stream(_) => {}
    }
}

fn log_end(peer: SocketAddr, end: &End) {
    match end {
        End::Finished => tracing::info!(%peer, "disconnected: stream finished"),
        End::ExtraStream => {
            tracing::info!(%peer, code = %ErrorCode::PROTOCOL_VIOLATION, "disconnected: extra stream")
        }
        // Closes decided by the registry were logged with their reason already.
        End::Connection(ConnectionError::LocallyClosed) => tracing::debug!(%peer, "disconnected"),
        End::Connection(ConnectionError::ApplicationClosed(close)) => tracing::info!(
            %peer,
            code = %ErrorCode(close.error_code.into_inner()),
            reason = %String::from_utf8_lossy(&close.reason),
            "disconnected by peer"
        ),
        End::Connection(e) => tracing::info!(%peer, "disconnected: {e}"),
        End::Stream(e) => tracing::info!(%peer, "disconnected: {e}"),
    }
}

/// Moves bytes between the connection's one stream and its session.
async fn drive(shared: &Shared, runtime: &dyn Runtime, connection: &Connection, handle: ConnectionHandle) -> End {
    // If no stream ever comes, the registry's handshake timeout closes the
    // connection, which ends this wait.
    let (mut send, mut recv) = match connection.accept_bi().await {
        Ok(streams) => streams,
        Err(e) => return End::Connection(e),
    };
    let mut extra_bi = pin!(connection.accept_bi());
    let mut extra_uni = pin!(connection.accept_uni());
    let mut timer = Timer::new(runtime);
    let mut out = Outbox::default();
    let mut buf = vec![0u8; 16 * 1024];
    poll_fn(|cx| {
        for _ in 0..BUDGET {
            let mut progressed = false;
            if let Poll::Ready(result) = extra_bi.as_mut().poll(cx) {
                return Poll::Ready(result.map_or_else(End::Connection, |_| End::ExtraStream));
            }
            if let Poll::Ready(result) = extra_uni.as_mut().poll(cx) {
                return Poll::Ready(result.map_or_else(End::Connection, |_| End::ExtraStream));
            }
            match recv.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(End::Finished),
                Poll::Ready(Ok(n)) => {
                    let mut state = shared.lock();
                    // An error has closed the session in the registry and
                    // queued the Closed event that closes the connection.
                    let _ = state.registry.handle_input(handle, runtime.now(), buf.get(..n).unwrap_or_default());
                    state.drain_events();
                    progressed = true;
                }
                Poll::Ready(Err(quinn::ReadError::ConnectionLost(e))) => return Poll::Ready(End::Connection(e)),
                Poll::Ready(Err(e)) => return Poll::Ready(End::Stream(e.to_string())),
                Poll::Pending => {}
            }
            let flushed =
                out.poll_flush(cx, &mut send, |b| shared.lock().registry.poll_transmit(handle, runtime.now(), b));
            match flushed {
                Poll::Ready(Err(quinn::WriteError::ConnectionLost(e))) => return Poll::Ready(End::Connection(e)),
                Poll::Ready(Err(e)) => return Poll::Ready(End::Stream(e.to_string())),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
            let next = shared.lock().registry.poll_connection_timeout(handle);
            if timer.poll_at(cx, next).is_ready() {
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Binds a server endpoint on `addr` with `config`, on `runtime`.
pub fn server_endpoint(
    runtime: Arc<dyn Runtime>,
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime)
}

/// Binds a client endpoint on `addr` (use port 0) with `config` as the
/// default client configuration, on `runtime`.
pub fn client_endpoint(
    runtime: Arc<dyn Runtime>,
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> std::io::Result<Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let mut endpoint = Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
