//! The meta server's driver: one task per connection around a shared
//! [`Registry`], plus one task for the registry's timers.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::net::{SocketAddr, UdpSocket};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use metaserve_proto::{
    Ban, CodeCounts, ConnectionHandle, Counters, EntryInfo, Error, ErrorCode, Event, NamespaceInfo, Registry,
    RegistryConfig, Server, Stats,
};
use quinn::{Connection, ConnectionError, Endpoint, Incoming, Runtime, VarInt};

use crate::admission::{Admission, ConnectionLimits, Decision, Slot};
use crate::io::{race, Outbox, Timer, BUDGET};
use crate::throttle::LogThrottle;

/// The registry's timers are checked at least this often, so deadlines
/// created after the timer task went to sleep are never late by more.
const TIMER_TICK: Duration = Duration::from_millis(250);

/// How long `serve` waits on shutdown for the peers to be told, at most.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(3);

/// How long an ended session may take to deliver its final frames (a
/// Welcome that was due, the Reject) before its connection is closed
/// anyway: a peer that stops reading cannot hold a connection open with it.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A connection with a session in the registry, as the driver tracks it.
#[derive(Debug)]
struct Conn {
    connection: Connection,
    /// Set once the connection's task has its session stream: a session
    /// ended after that is closed by the task, after its final frames.
    streaming: bool,
    /// Wakes the connection's task when its session is ended from elsewhere
    /// (a timeout, a ban, a takeover, shutdown).
    waker: Option<std::task::Waker>,
    /// The session ended: close with this code and reason, after the final
    /// frames or within [`CLOSE_LINGER`] of the task's seeing it.
    closing: Option<(ErrorCode, String)>,
}

#[derive(Debug)]
struct State {
    registry: Registry,
    connections: HashMap<ConnectionHandle, Conn>,
    /// The driver's own counts; the byte counts are kept apart, in atomics.
    traffic: Traffic,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    shutting_down: AtomicBool,
    shutdown: event_listener::Event,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    admission: Admission,
    logs: LogThrottle,
}

/// What the driver counts around the registry (whose own counts are
/// [`Stats`] and [`Counters`]), since the server was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Traffic {
    /// Bytes read from clients' session streams.
    pub bytes_received: u64,
    /// Bytes the registry produced for clients' session streams.
    pub bytes_sent: u64,
    /// QUIC connections that completed their handshake.
    pub connections: u64,
    /// Incoming connections whose QUIC handshake failed (including those
    /// that timed out).
    pub handshakes_failed: u64,
    /// QUIC handshakes that did not complete within the handshake timeout.
    pub handshakes_timed_out: u64,
    /// Connection attempts refused before any TLS work, because
    /// [`ConnectionLimits`] handshakes were in progress (in total or from
    /// the source address).
    pub attempts_refused: u64,
    /// Connection attempts answered with a Retry (address validation),
    /// because more than [`ConnectionLimits::validate_above`] handshakes
    /// were in progress.
    pub retries: u64,
    /// QUIC handshakes in progress now (a gauge, not a count since creation).
    pub handshakes_in_progress: u64,
    /// Connections the driver closed on its own account: the client
    /// opened a second stream (`PROTOCOL_VIOLATION`). Closes the registry
    /// decides, including a finished session stream, are in
    /// [`Counters::closed`] and [`Counters::refused`].
    pub closed_by_server: CodeCounts,
    /// Connections the client closed, by the application code it sent.
    pub closed_by_client: CodeCounts,
    /// Connections that ended without an application close: idle timeout,
    /// reset, transport error.
    pub lost: u64,
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
    /// Acts on the registry's events: logs them, and has ended sessions'
    /// connections closed (see [`Event::Closed`] for the final-frame
    /// contract): by their task, after the final frames, if they have a
    /// stream; at once if not.
    fn drain_events(&mut self, logs: &LogThrottle) {
        while let Some(event) = self.registry.poll_event() {
            match event {
                Event::Accepted { connection, role, namespace, address, resumed } => {
                    if logs.allow("session accepted", Instant::now()) {
                        let peer = self.connections.get(&connection).map(|c| c.connection.remote_address());
                        tracing::info!(?peer, %role, %namespace, %address, resumed, "session accepted");
                    }
                }
                Event::Closed { connection, code, reason } => {
                    let Some(conn) = self.connections.get_mut(&connection) else { continue };
                    if logs.allow("closing connection", Instant::now()) {
                        tracing::info!(peer = %conn.connection.remote_address(), %code, %reason, "closing connection");
                    }
                    if conn.streaming {
                        conn.closing = Some((code, reason));
                        if let Some(waker) = conn.waker.take() {
                            waker.wake();
                        }
                    } else {
                        close(&conn.connection, code, &reason);
                    }
                }
            }
        }
    }
}

/// A meta server that can run in any async program on a quinn [`Endpoint`].
///
/// The runtime crates (`metaserve-tokio`, `metaserve-async-std`) make one
/// on their runtime with their `meta_server(config)`; call [`MetaServer::new`]
/// yourself to pick the runtime at run time or to bring your own
/// [`quinn::Runtime`].
#[derive(Debug)]
pub struct MetaServer {
    shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
}

/// A cheap, cloneable handle to a running [`MetaServer`]: statistics, the
/// live lists, publish tokens, bans, live configuration, and graceful
/// shutdown.
#[derive(Debug, Clone)]
pub struct MetaServerHandle {
    shared: Arc<Shared>,
    runtime: Arc<dyn Runtime>,
}

impl MetaServer {
    /// A meta server with `config`, on `runtime`. Its registry epoch is
    /// taken from the clock, so browsers never resume into a different
    /// incarnation of the server.
    pub fn new(runtime: Arc<dyn Runtime>, config: RegistryConfig) -> Self {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let state =
            State { registry: Registry::new(config, epoch), connections: HashMap::new(), traffic: Traffic::default() };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            shutting_down: AtomicBool::new(false),
            shutdown: event_listener::Event::new(),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            admission: Admission::default(),
            logs: LogThrottle::default(),
        });
        MetaServer { shared, runtime }
    }

    /// A handle for statistics and shutdown, usable while `serve` runs.
    pub fn handle(&self) -> MetaServerHandle {
        MetaServerHandle { shared: self.shared.clone(), runtime: self.runtime.clone() }
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
                Ok(Some(incoming)) => self.admit(incoming),
                Ok(None) | Err(()) => break,
            }
        }
        self.handle().shutdown();
        // Each connection's task sends its session's final frames (the
        // SHUTTING_DOWN Reject) and closes it, within CLOSE_LINGER.
        let mut timer = Timer::new(&*self.runtime);
        let linger = self.runtime.now() + SHUTDOWN_LINGER;
        while !shared.lock().connections.is_empty() && self.runtime.now() < linger {
            timer.sleep_until(self.runtime.now() + Duration::from_millis(20)).await;
        }
        endpoint.close(
            VarInt::from_u64(ErrorCode::SHUTTING_DOWN.0).unwrap_or(VarInt::MAX),
            Error::ShuttingDown.to_string().as_bytes(),
        );
        // Let the CONNECTION_CLOSE frames go out, but no longer than this: a
        // client advertising a large ack delay could otherwise stretch the
        // draining period, and the exit with it, to minutes.
        let _ = race(endpoint.wait_idle(), timer.sleep_until(self.runtime.now() + SHUTDOWN_LINGER)).await;
    }
}

impl MetaServer {
    /// Decides on one connection attempt before any TLS work: see
    /// [`ConnectionLimits`].
    fn admit(&self, incoming: Incoming) {
        let shared = &self.shared;
        let peer = incoming.remote_address();
        match shared.admission.decide(peer.ip(), incoming.remote_address_validated()) {
            Decision::Accept(slot) => {
                let task = run_connection(shared.clone(), self.runtime.clone(), incoming, slot);
                self.runtime.spawn(Box::pin(task));
            }
            Decision::Retry => {
                tracing::debug!(%peer, "connection attempt asked to validate its address (Retry)");
                if incoming.may_retry() {
                    // Fails only for an attempt that already carried a Retry token.
                    let _ = incoming.retry();
                } else {
                    shared.admission.retry_failed();
                }
            }
            Decision::Refuse { per_ip, max } => {
                if shared.logs.allow("connection attempt refused", Instant::now()) {
                    let scope = if per_ip { "from this address" } else { "in total" };
                    tracing::info!(%peer, "connection attempt refused: {max} QUIC handshakes in progress {scope}");
                }
                incoming.refuse();
            }
        }
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

    /// The live entries of `namespace` with the time each version was
    /// published, and the namespace's revision, read at one moment; `None`
    /// if the namespace does not exist (no session uses it).
    pub fn entries(&self, namespace: &str) -> Option<(u64, Vec<EntryInfo>)> {
        let state = self.shared.lock();
        let revision = state.registry.namespace_revision(namespace)?;
        Some((revision, state.registry.entries(namespace).collect()))
    }

    /// The newest revision of `namespace`, or `None` if it does not exist:
    /// a cheap test of whether its list changed.
    pub fn namespace_revision(&self, namespace: &str) -> Option<u64> {
        self.shared.lock().registry.namespace_revision(namespace)
    }

    /// The registry's monotonic counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().registry.counters().clone()
    }

    /// The driver's counts: bytes, connections, closes.
    pub fn traffic(&self) -> Traffic {
        let mut traffic = self.shared.lock().traffic;
        traffic.bytes_received = self.shared.bytes_received.load(Ordering::Relaxed);
        traffic.bytes_sent = self.shared.bytes_sent.load(Ordering::Relaxed);
        let admission = self.shared.admission.counts();
        traffic.attempts_refused = admission.refused;
        traffic.retries = admission.retries;
        traffic.handshakes_timed_out = admission.timed_out;
        traffic.handshakes_in_progress = admission.in_progress as u64;
        traffic
    }

    /// The bounds on QUIC handshakes in progress.
    pub fn connection_limits(&self) -> ConnectionLimits {
        self.shared.admission.limits()
    }

    /// Replaces the bounds on QUIC handshakes in progress; they apply to
    /// new connection attempts. Handshakes in progress are not cut short.
    pub fn set_connection_limits(&self, limits: ConnectionLimits) {
        self.shared.admission.set_limits(limits);
    }

    /// The registry's epoch, carried by every Welcome.
    pub fn epoch(&self) -> u64 {
        self.shared.lock().registry.epoch()
    }

    /// The configuration in force.
    pub fn config(&self) -> RegistryConfig {
        self.shared.lock().registry.config().clone()
    }

    /// Replaces the configuration; see `Registry::set_config` for what
    /// applies to open sessions and what to new ones only. The QUIC
    /// transport settings derived from it (`tls::server_config`) are the
    /// endpoint's: pass a new server config to `Endpoint::set_server_config`.
    pub fn set_config(&self, config: RegistryConfig) {
        self.shared.lock().registry.set_config(config);
    }

    /// Replaces the ban list: banned addresses are refused with `BANNED`,
    /// and open connections from them are closed with `BANNED` and the
    /// ban's reason. Returns how many were closed. See `Registry::set_bans`.
    pub fn set_bans(&self, bans: impl IntoIterator<Item = Ban>) -> usize {
        let mut state = self.shared.lock();
        let closed = state.registry.set_bans(self.runtime.now(), bans);
        state.drain_events(&self.shared.logs);
        closed
    }

    /// The ban list, as last set.
    pub fn bans(&self) -> Vec<Ban> {
        self.shared.lock().registry.bans().to_vec()
    }

    /// Whether [`MetaServerHandle::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
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
        state.drain_events(&self.shared.logs);
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
            state.drain_events(&shared.logs);
            state.registry.poll_timeout()
        };
        shared.logs.report(Instant::now());
        let tick = now + TIMER_TICK;
        timer.sleep_until(next.map_or(tick, |at| at.min(tick))).await;
    }
}

/// How a connection's session ended, for the log.
#[derive(Debug)]
enum End {
    /// The registry ended the session (its reason was logged then), and
    /// the driver closed the connection after the final frames;
    /// `finished` if it ended because the client finished its stream.
    Closed {
        finished: bool,
    },
    /// The client opened a second stream.
    ExtraStream,
    Connection(ConnectionError),
    Stream(String),
}

/// Completes the QUIC handshake within the registry's handshake timeout,
/// holding `slot` meanwhile. A connection dropped here is closed by quinn.
async fn handshake(shared: &Shared, runtime: &dyn Runtime, incoming: Incoming, slot: Slot) -> Option<Connection> {
    let peer = incoming.remote_address();
    let limit = shared.lock().registry.config().handshake_timeout;
    let mut timer = Timer::new(runtime);
    let result = match incoming.accept() {
        Ok(connecting) => race(connecting, timer.sleep_until(runtime.now() + limit)).await.ok(),
        Err(e) => Some(Err(e)),
    };
    match result {
        Some(Ok(connection)) => Some(connection),
        Some(Err(e)) => {
            tracing::debug!(%peer, "QUIC handshake failed: {e}");
            shared.lock().traffic.handshakes_failed += 1;
            None
        }
        None => {
            tracing::debug!(%peer, "QUIC handshake timed out after {limit:?}");
            shared.lock().traffic.handshakes_failed += 1;
            slot.timed_out();
            None
        }
    }
}

async fn run_connection(shared: Arc<Shared>, runtime: Arc<dyn Runtime>, incoming: Incoming, slot: Slot) {
    let peer = incoming.remote_address();
    let Some(connection) = handshake(&shared, &*runtime, incoming, slot).await else { return };
    let handle = {
        let mut state = shared.lock();
        state.traffic.connections += 1;
        match state.registry.accept(runtime.now(), peer) {
            Ok(handle) => {
                let conn = Conn { connection: connection.clone(), streaming: false, waker: None, closing: None };
                state.connections.insert(handle, conn);
                handle
            }
            Err(e) => {
                if shared.logs.allow("connection refused", Instant::now()) {
                    tracing::info!(%peer, code = %e.code(), reason = %e, "connection refused");
                }
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
        state.drain_events(&shared.logs);
        let traffic = &mut state.traffic;
        match &end {
            // Counted by the registry, which decided the close.
            End::Closed { .. } => {}
            End::ExtraStream => traffic.closed_by_server.add(ErrorCode::PROTOCOL_VIOLATION),
            // Closed by the registry (counted there) or by shutdown.
            End::Connection(ConnectionError::LocallyClosed) => {}
            End::Connection(ConnectionError::ApplicationClosed(close)) => {
                traffic.closed_by_client.add(ErrorCode(close.error_code.into_inner()))
            }
            End::Connection(_) | End::Stream(_) => traffic.lost += 1,
        }
    }
    if shared.logs.allow("disconnected", Instant::now()) {
        log_end(peer, &end);
    }
    match end {
        // Closed already, with the code the registry chose.
        End::Closed { .. } => {}
        End::ExtraStream => close(&connection, ErrorCode::PROTOCOL_VIOLATION, "a session uses exactly one stream"),
        End::Connection(_) | End::Stream(_) => {}
    }
}

fn log_end(peer: SocketAddr, end: &End) {
    match end {
        End::Closed { finished: true } => tracing::info!(%peer, "disconnected: stream finished"),
        End::Closed { finished: false } => tracing::debug!(%peer, "disconnected"),
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

/// Moves bytes between the connection's one stream and its session; once
/// the registry ends the session, delivers its final frames and closes the
/// connection (the contract of [`Event::Closed`]).
async fn drive(shared: &Shared, runtime: &dyn Runtime, connection: &Connection, handle: ConnectionHandle) -> End {
    // If no stream ever comes, the registry's handshake timeout closes the
    // connection, which ends this wait.
    let (mut send, mut recv) = match connection.accept_bi().await {
        Ok(streams) => streams,
        Err(e) => return End::Connection(e),
    };
    let mut out = {
        let mut state = shared.lock();
        match state.connections.get_mut(&handle) {
            Some(conn) => conn.streaming = true,
            None => {
                debug_assert!(false, "only the connection's own task removes its Conn");
                return End::Closed { finished: false };
            }
        }
        Outbox::new(state.registry.config().transmit_chunk)
    };
    let mut extra_bi = pin!(connection.accept_bi());
    let mut extra_uni = pin!(connection.accept_uni());
    let mut timer = Timer::new(runtime);
    // Stream data is taken from quinn as it arrived, without a copy, and
    // with no read buffer per connection.
    let mut chunks: [Bytes; 4] = Default::default();
    let mut finished = false;
    // When the linger of an ended session ends: CLOSE_LINGER after this task
    // first saw the end, on the runtime's clock.
    let mut linger: Option<Instant> = None;
    let closing = poll_fn(|cx| {
        for _ in 0..BUDGET {
            if let Poll::Ready(result) = extra_bi.as_mut().poll(cx) {
                return Poll::Ready(Err(result.map_or_else(End::Connection, |_| End::ExtraStream)));
            }
            if let Poll::Ready(result) = extra_uni.as_mut().poll(cx) {
                return Poll::Ready(Err(result.map_or_else(End::Connection, |_| End::ExtraStream)));
            }
            // Nothing is read once the client finished its stream.
            let read = if finished { Poll::Pending } else { pin!(recv.read_chunks(&mut chunks)).poll(cx) };
            let now = runtime.now();
            let mut progressed = false;
            // One lock per pass: input, the next output chunk, the next deadline.
            let (has_output, next, closing) = {
                let mut state = shared.lock();
                match read {
                    Poll::Ready(Ok(None)) => {
                        // The registry decides: a graceful end, or a stream cut
                        // inside a frame; either way the session ends.
                        finished = true;
                        let _ = state.registry.handle_finish(handle);
                        state.drain_events(&shared.logs);
                        progressed = true;
                    }
                    Poll::Ready(Ok(Some(n))) => {
                        for chunk in chunks.iter_mut().take(n) {
                            shared.bytes_received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                            // An error ends the session in the registry and
                            // queues its Closed event.
                            let _ = state.registry.handle_input(handle, now, chunk);
                            *chunk = Bytes::new();
                        }
                        state.drain_events(&shared.logs);
                        progressed = true;
                    }
                    Poll::Ready(Err(quinn::ReadError::ConnectionLost(e))) => {
                        return Poll::Ready(Err(End::Connection(e)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Stream(e.to_string()))),
                    Poll::Pending => {}
                }
                let has_output = out.refill(|b| {
                    let more = state.registry.poll_transmit(handle, now, b);
                    shared.bytes_sent.fetch_add(b.len() as u64, Ordering::Relaxed);
                    more
                });
                let final_frames_taken = state.registry.poll_close(handle).is_some();
                let Some(conn) = state.connections.get_mut(&handle) else {
                    debug_assert!(false, "only the connection's own task removes its Conn");
                    return Poll::Ready(Err(End::Closed { finished }));
                };
                if !conn.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    conn.waker = Some(cx.waker().clone());
                }
                let closing = conn
                    .closing
                    .clone()
                    .map(|(code, reason)| (*linger.get_or_insert(now + CLOSE_LINGER), code, reason));
                // A browser's update deadline only leads to more output: while
                // output waits for the stream (whose writability wakes this
                // task), a passed deadline is no progress. Counting it made a
                // browser that stops reading spin this loop at full CPU.
                let next = match &closing {
                    Some((deadline, ..)) => Some(*deadline),
                    None if has_output => None,
                    None => state.registry.poll_connection_timeout(handle),
                };
                (has_output, next, closing.map(|c| (c, final_frames_taken)))
            };
            match out.poll_write(cx, &mut send) {
                // Taken whole: the registry may have more.
                Poll::Ready(Ok(())) => progressed |= has_output,
                Poll::Ready(Err(quinn::WriteError::ConnectionLost(e))) => {
                    return Poll::Ready(Err(End::Connection(e)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Stream(e.to_string()))),
                Poll::Pending => {}
            }
            if let Some(((deadline, code, reason), final_frames_taken)) = closing {
                // Every final frame is with quinn, or the linger is over.
                if (final_frames_taken && out.is_empty()) || now >= deadline {
                    return Poll::Ready(Ok((deadline, code, reason)));
                }
            }
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
    .await;
    let (deadline, code, reason) = match closing {
        Ok(closing) => closing,
        Err(end @ End::Connection(_)) => return end,
        Err(end) => {
            // The peer broke its stream or opened another after the session
            // had ended: it is still told the registry's close, at once.
            let ended = shared.lock().connections.get(&handle).and_then(|c| c.closing.clone());
            match ended {
                Some((code, reason)) => (runtime.now(), code, reason),
                None => return end,
            }
        }
    };
    // Finish the stream and wait (until the linger's deadline) for the peer
    // to acknowledge all of it, so the close cannot overtake the final frames.
    let _ = send.finish();
    let _ = race(send.stopped(), timer.sleep_until(deadline)).await;
    close(connection, code, &reason);
    End::Closed { finished }
}

/// The UDP receive and send buffer sizes a meta server asks the kernel
/// for: 4 MiB each, room for several thousand datagrams, so a burst (or a
/// moment in which the runtime's threads are busy) does not overflow the
/// receive queue, whose default on Linux (about 208 KiB) holds only ~150.
/// The kernel caps the request at `net.core.rmem_max` / `wmem_max`; see
/// [`SocketBuffers`].
pub const UDP_BUFFER: usize = 4 << 20;

/// The buffer sizes of a bound UDP socket: what was asked for, and what the
/// kernel granted (Linux reports twice the usable size, for its own
/// bookkeeping, and caps requests at `net.core.rmem_max` / `wmem_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketBuffers {
    /// The size asked for, for each direction.
    pub requested: usize,
    /// The receive buffer the kernel reports.
    pub receive: usize,
    /// The send buffer the kernel reports.
    pub send: usize,
}

impl SocketBuffers {
    /// Whether the kernel granted less than was asked for (on Linux: raise
    /// `net.core.rmem_max` and `net.core.wmem_max`).
    pub fn is_capped(&self) -> bool {
        self.receive < self.requested || self.send < self.requested
    }
}

/// Binds a UDP socket on `addr` with receive and send buffers of `buffer`
/// bytes each, as far as the kernel grants.
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<(UdpSocket, SocketBuffers)> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // A wildcard IPv6 listener serves IPv4 clients too, as std's bind does by default on Linux.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a refused size leaves the default, which is reported.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let buffers =
        SocketBuffers { requested: buffer, receive: socket.recv_buffer_size()?, send: socket.send_buffer_size()? };
    Ok((socket.into(), buffers))
}

/// Binds a server endpoint on `addr` with `config`, on `runtime`, with
/// [`UDP_BUFFER`]-sized socket buffers and quinn's default endpoint
/// configuration (a random stateless-reset key: see
/// [`server_endpoint_with`] for one that survives restarts).
pub fn server_endpoint(
    runtime: Arc<dyn Runtime>,
    addr: SocketAddr,
    config: quinn::ServerConfig,
) -> std::io::Result<Endpoint> {
    let (socket, _) = udp_socket(addr, UDP_BUFFER)?;
    server_endpoint_with(runtime, socket, quinn::EndpointConfig::default(), config)
}

/// A server endpoint on a bound `socket` (see [`udp_socket`]) with an
/// endpoint configuration of the caller's, such as
/// [`tls::endpoint_config`](crate::tls::endpoint_config), whose
/// stateless-reset key survives restarts.
pub fn server_endpoint_with(
    runtime: Arc<dyn Runtime>,
    socket: UdpSocket,
    endpoint: quinn::EndpointConfig,
    config: quinn::ServerConfig,
) -> std::io::Result<Endpoint> {
    Endpoint::new(endpoint, Some(config), socket, runtime)
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
