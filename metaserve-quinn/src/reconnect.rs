//! Optional reconnect helpers: connect with backoff, a publisher that keeps
//! its entry listed across connections, and a browser that resumes its list.
//!
//! [`publish`](crate::publish) and [`browse`](crate::browse) run one session
//! on a connection the caller made, and end when it ends. A game wants more:
//! when the meta server restarts or the network drops, it wants to be back
//! as soon as the server is, without thousands of its copies knocking in
//! lockstep. [`Reconnect`] knows where the meta server is and how to back
//! off ([`Backoff`]), and runs sessions on new connections until the game is
//! done or the server gives a final answer ([`ClientError::is_transient`]).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::fmt;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use metaserve_proto::{Browser, BrowserEvent, Resume, Server, Welcome};
use quinn::{Connecting, Connection, Endpoint, RecvStream, Runtime, SendStream, VarInt};

use crate::client::{close_after, poll_browser_input, publish_session, GOODBYE_LINGER};
use crate::io::{race, Outbox, Timer};
use crate::{BrowseOptions, ClientError, PublishOptions};

/// How long to wait between attempts to reach the meta server: exponential
/// backoff with jitter.
///
/// The delay before retry *n* (0 for the first) is
/// `min(initial × multiplier^n, max)`, of which a random fraction of up to
/// `jitter` is taken off. The jitter matters most when a meta server with
/// thousands of clients restarts: they all lose their connection at the same
/// moment, and without it they would all come back at the same moments too.
/// A session that got its Welcome starts the sequence over.
///
/// Every field is a knob; the defaults suit a game on the public Internet:
///
/// ```
/// use std::time::Duration;
/// use metaserve_quinn::Backoff;
///
/// let backoff = Backoff::default();
/// assert_eq!(backoff.initial, Duration::from_millis(250));
/// assert_eq!(backoff.max, Duration::from_secs(15));
/// // Without jitter: 250 ms, 500 ms, 1 s, 2 s, ... up to 15 s.
/// assert_eq!(backoff.nominal(3), Duration::from_secs(2));
/// assert_eq!(backoff.nominal(10), Duration::from_secs(15));
/// // With the default jitter of 0.5, each delay is drawn from its upper half.
/// assert_eq!(backoff.delay(3, 0.0), Duration::from_secs(2));
/// assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(1500));
///
/// // A LAN game that wants to be back quickly, and never waits long:
/// let lan = Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2), ..Backoff::default() };
/// let mut delays = lan.delays();
/// assert!(delays.next_delay() <= Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first retry. Default 250 ms: short enough that a
    /// restarted meta server has its clients back within a second or so.
    pub initial: Duration,
    /// The longest delay. Default 15 s: a server down for long is retried
    /// four times a minute by each client, which costs it little.
    pub max: Duration,
    /// What each further failure multiplies the delay by. Default 2. Values
    /// below 1 (and NaN) count as 1: a constant delay.
    pub multiplier: f64,
    /// The fraction of each delay that is random, from 0 (none: every client
    /// retries at the same moments) to 1 (a delay anywhere between zero and
    /// the nominal one). Default 0.5: each delay is drawn uniformly from the
    /// upper half of the nominal one, so delays still grow, but spread out.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(250), max: Duration::from_secs(15), multiplier: 2.0, jitter: 0.5 }
    }
}

impl Backoff {
    /// The delay before retry `retry` (0 for the first), before jitter.
    pub fn nominal(&self, retry: u32) -> Duration {
        let multiplier = if self.multiplier >= 1.0 { self.multiplier } else { 1.0 };
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * multiplier.powi(exponent);
        // An overflowing product (infinite) is simply past the cap.
        Duration::try_from_secs_f64(secs).map_or(self.max, |delay| delay.min(self.max))
    }

    /// The delay before retry `retry` with `unit` (in `[0, 1)`) as the random
    /// draw: `nominal × (1 − jitter × unit)`.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let jitter = if self.jitter > 0.0 { self.jitter.min(1.0) } else { 0.0 };
        let unit = if unit > 0.0 { unit.min(1.0) } else { 0.0 };
        self.nominal(retry).mul_f64(1.0 - jitter * unit)
    }

    /// The sequence of delays for one run of failures, with its own random
    /// draws (not cryptographic: enough to spread clients apart).
    pub fn delays(&self) -> Delays {
        Delays { backoff: *self, retries: 0, rng: seed() }
    }
}

/// A seed that differs between processes, threads and calls, without a
/// dependency: std's `RandomState` is randomly keyed per thread, and every
/// new one is keyed differently.
fn seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// The delays of a [`Backoff`] for one run of consecutive failures: an
/// endless [`Iterator`], and [`Delays::reset`] once a session succeeded.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    retries: u32,
    rng: u64,
}

impl Delays {
    /// The next delay; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        // splitmix64: tiny, and fine for spreading retries apart.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        let delay = self.backoff.delay(self.retries, unit);
        self.retries = self.retries.saturating_add(1);
        delay
    }

    /// Failures counted since the start or the last reset.
    pub fn failures(&self) -> u32 {
        self.retries
    }

    /// Starts over at [`Backoff::initial`]: the last attempt succeeded.
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// A failure a [`Reconnect`] is about to retry: passed to the
/// [`Reconnect::on_retry`] callback, and by a [`ReconnectingBrowse`] as
/// [`ReconnectEvent::Retrying`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Why the session, or the attempt to start one, failed. Always
    /// [transient](ClientError::is_transient).
    pub error: ClientError,
    /// How long until the next attempt starts.
    pub delay: Duration,
    /// Consecutive failures so far, this one included (1 for the first).
    pub failures: u32,
}

type OnRetry = Arc<dyn Fn(&Retry) + Send + Sync>;

/// Where a meta server is, and how to get back to it: connects with
/// [`Backoff`], and runs a publisher ([`Reconnect::publish`]) or a browser
/// ([`Reconnect::browse`]) across as many connections as it takes.
///
/// Failures are [classified](ClientError::is_transient): transient ones are
/// logged at `warn` with the delay before the next attempt, reported to the
/// [`on_retry`](Reconnect::on_retry) callback, and retried; final ones are
/// returned. Cloning is cheap; clones share the endpoint.
///
/// The address is resolved once, by the caller: a meta server behind a DNS
/// name that moves needs a new `Reconnect` after resolving it again.
///
/// The runtime crates (`metaserve-tokio`, `metaserve-async-std`, this
/// crate's `smol` module) have a `reconnect` function that passes their
/// runtime; this is what it returns:
///
/// ```no_run
/// # async fn game(runtime: std::sync::Arc<dyn quinn::Runtime>, endpoint: quinn::Endpoint)
/// # -> Result<(), metaserve_quinn::ClientError> {
/// use std::time::Duration;
/// use metaserve_quinn::{Backoff, Reconnect};
///
/// let meta = Reconnect::new(runtime, endpoint, "203.0.113.7:27950".parse().unwrap(), "master.example.net")
///     .with_backoff(Backoff { max: Duration::from_secs(30), ..Backoff::default() })
///     .on_retry(|retry| eprintln!("meta server lost: {}; reconnecting in {:?}", retry.error, retry.delay));
/// // Retries until a QUIC connection is up (or a final error, such as an untrusted certificate).
/// let connection = meta.connect().await?;
/// # let _ = connection; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Reconnect {
    runtime: Arc<dyn Runtime>,
    endpoint: Endpoint,
    server: SocketAddr,
    server_name: String,
    backoff: Backoff,
    connect_timeout: Duration,
    on_retry: Option<OnRetry>,
}

impl fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reconnect")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("on_retry", &self.on_retry.is_some())
            .finish_non_exhaustive()
    }
}

/// How long one QUIC handshake may take before the attempt counts as
/// failed. quinn alone would wait for the idle timeout (30 s) and resend
/// its first packet ever more rarely; a fresh attempt after a backoff delay
/// reaches a server that came back in the meantime sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Reconnect {
    /// The meta server at `server`, whose certificate must be valid for
    /// `server_name` (unless the endpoint's client configuration pins it),
    /// reached from `endpoint` (see `client_endpoint`; its default client
    /// configuration is used), on `runtime`. Default [`Backoff`], a connect
    /// timeout of 5 s, no callback.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        endpoint: Endpoint,
        server: SocketAddr,
        server_name: impl Into<String>,
    ) -> Self {
        Reconnect {
            runtime,
            endpoint,
            server,
            server_name: server_name.into(),
            backoff: Backoff::default(),
            connect_timeout: CONNECT_TIMEOUT,
            on_retry: None,
        }
    }

    /// Uses `backoff` between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up on one QUIC handshake after `timeout` (default 5 s), and
    /// retries after a backoff delay
    /// ([`ClientError::ConnectTimeout`]). On links with round trips of a
    /// second or more, raise it.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Calls `callback` with every failure about to be retried, before the
    /// delay starts: for a status line such as "meta server lost:
    /// reconnecting in 400 ms". It runs inside the driver's poll, so it must
    /// be quick and must not block.
    pub fn on_retry(mut self, callback: impl Fn(&Retry) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(callback));
        self
    }

    /// The endpoint connections are made from (wait on it before exiting,
    /// so that the last close reaches the server).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The meta server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The backoff policy in use.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// Connects, retrying transient failures with backoff, until a QUIC
    /// connection is established or a failure is final (an untrusted
    /// certificate, an endpoint that is closed, ...). Run a session on it
    /// with `publish`, `browse`, or your own code.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let mut delays = self.backoff.delays();
        loop {
            let error = match self.attempt().await {
                Ok(connection) => return Ok(connection),
                Err(error) => error,
            };
            let retry = self.retry(error, &mut delays)?;
            Timer::new(&*self.runtime).sleep_until(self.runtime.now() + retry.delay).await;
        }
    }

    /// One connection attempt, bounded by the connect timeout.
    async fn attempt(&self) -> Result<Connection, ClientError> {
        let connecting = self.endpoint.connect(self.server, &self.server_name)?;
        let mut timer = Timer::new(&*self.runtime);
        match race(connecting, timer.sleep_until(self.runtime.now() + self.connect_timeout)).await {
            Ok(connected) => Ok(connected?),
            // Dropping the handshake abandons it.
            Err(()) => Err(ClientError::ConnectTimeout(self.connect_timeout)),
        }
    }

    /// Returns a final `error`; counts, logs and reports a transient one,
    /// and returns the delay before the next attempt.
    fn retry(&self, error: ClientError, delays: &mut Delays) -> Result<Retry, ClientError> {
        if !error.is_transient() {
            return Err(error);
        }
        let delay = delays.next_delay();
        let retry = Retry { error, delay, failures: delays.failures() };
        tracing::warn!(
            server = %self.server,
            error = %retry.error,
            failures = retry.failures,
            "meta server lost: reconnecting in {} ms",
            delay.as_millis()
        );
        if let Some(callback) = &self.on_retry {
            callback(&retry);
        }
        Ok(retry)
    }

    /// Publishes `heartbeats` as [`publish`](crate::publish) does, across
    /// as many connections as it takes, until the stream of heartbeats ends:
    /// then says Goodbye (the entry disappears at once) and returns `Ok`.
    ///
    /// - The stream is consumed once, across sessions: items that arrive
    ///   while the meta server is unreachable are not lost, the newest one
    ///   wins as always.
    /// - Every new session first re-sends the newest blob, so a game that
    ///   publishes only on change is listed again after a reconnect without
    ///   sending anything new.
    /// - A transient failure is retried after a [`Backoff`] delay; the delays
    ///   start over after a session that got its Welcome. A final failure
    ///   (`UNAUTHORIZED`, `REPLACED`, a blob that is too large, ...; see
    ///   [`ClientError::is_transient`]) is returned.
    /// - If the stream ends while no session is up, this returns `Ok` at once:
    ///   there is no entry to remove. If the last session fails after the
    ///   stream ended, a transient failure is `Ok` too (its entry went with
    ///   it); a final one is returned.
    pub async fn publish<S>(&self, options: PublishOptions, heartbeats: S) -> Result<(), ClientError>
    where
        S: Stream<Item = Bytes>,
    {
        let mut source = Heartbeats { stream: pin!(heartbeats), latest: None, ended: false };
        let mut delays = self.backoff.delays();
        loop {
            let error = match race(self.attempt(), source.until_end()).await {
                // The game is done before a session was up: nothing to remove.
                Err(()) => return Ok(()),
                Ok(Err(error)) => error,
                Ok(Ok(connection)) => {
                    let mut welcomed = false;
                    let session = source.session();
                    let result =
                        publish_session(self.runtime.clone(), &connection, options.clone(), session, &mut welcomed)
                            .await;
                    if welcomed {
                        delays.reset();
                    }
                    match result {
                        Ok(()) => return Ok(()),
                        Err(error) => {
                            close_after(&connection, &error);
                            if source.ended {
                                return if error.is_transient() { Ok(()) } else { Err(error) };
                            }
                            error
                        }
                    }
                }
            };
            let retry = self.retry(error, &mut delays)?;
            let mut timer = Timer::new(&*self.runtime);
            if race(timer.sleep_until(self.runtime.now() + retry.delay), source.until_end()).await.is_err() {
                return Ok(());
            }
        }
    }

    /// A live server list of `options.namespace` that survives lost
    /// connections; see [`ReconnectingBrowse`]. Nothing happens until it is
    /// polled.
    pub fn browse(&self, options: BrowseOptions) -> ReconnectingBrowse {
        self.browse_with(Browser::new(options))
    }

    /// Like [`Reconnect::browse`], with a prepared [`Browser`]: for example
    /// `browse.into_browser().reconnect()` to carry on from a plain
    /// [`Browse`](crate::Browse) with its list and resume point.
    pub fn browse_with(&self, browser: Browser) -> ReconnectingBrowse {
        ReconnectingBrowse {
            reconnect: self.clone(),
            delays: self.backoff.delays(),
            browser,
            phase: Phase::Connect,
            timer: None,
            queued: VecDeque::new(),
            error: None,
        }
    }
}

/// The game's heartbeat stream, shared by the sessions of a reconnecting
/// publisher, and the newest blob it produced.
struct Heartbeats<'a, S> {
    stream: Pin<&'a mut S>,
    latest: Option<Bytes>,
    ended: bool,
}

impl<'a, S: Stream<Item = Bytes>> Heartbeats<'a, S> {
    /// Takes heartbeats while no session is up, keeping the newest; completes
    /// when the stream ends.
    async fn until_end(&mut self) {
        poll_fn(|cx| loop {
            match ready!(self.stream.as_mut().poll_next(cx)) {
                Some(blob) => self.latest = Some(blob),
                None => {
                    self.ended = true;
                    return Poll::Ready(());
                }
            }
        })
        .await;
    }

    /// The heartbeats of one session: the newest blob so far, then the
    /// stream's next items.
    fn session(&mut self) -> SessionHeartbeats<'_, 'a, S> {
        let replay = self.latest.clone();
        SessionHeartbeats { source: self, replay }
    }
}

struct SessionHeartbeats<'s, 'a, S> {
    source: &'s mut Heartbeats<'a, S>,
    replay: Option<Bytes>,
}

impl<S: Stream<Item = Bytes>> Stream for SessionHeartbeats<'_, '_, S> {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if let Some(blob) = this.replay.take() {
            return Poll::Ready(Some(blob));
        }
        if this.source.ended {
            return Poll::Ready(None);
        }
        match ready!(this.source.stream.as_mut().poll_next(cx)) {
            Some(blob) => {
                this.source.latest = Some(blob.clone());
                Poll::Ready(Some(blob))
            }
            None => {
                this.source.ended = true;
                Poll::Ready(None)
            }
        }
    }
}

/// What a [`ReconnectingBrowse`] yields: the list's events, and the
/// sessions they come from starting and failing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReconnectEvent {
    /// An event of the list, as a [`Browse`](crate::Browse) yields it:
    /// `Upsert`, `Remove`, `Synced` or `Reset`, never `Rejected` (a
    /// rejection is a [`Retrying`](ReconnectEvent::Retrying) or the
    /// stream's final error). A `Reset` also comes when a reconnect cannot
    /// resume and the list is cleared for a fresh snapshot.
    Browser(BrowserEvent),
    /// A session started: the meta server's Welcome arrived. `resume` is
    /// what its Hello asked for. If the server honours it, the changes since
    /// follow, ending in `Synced { snapshot: false, .. }`; if not (the server
    /// restarted, or the list fell too far behind), a `Reset`, a fresh
    /// snapshot and `Synced { snapshot: true, .. }` follow. `None` for the
    /// first session (unless its options carried a resume point), and after
    /// a session that ended before its first `Synced`: the list then starts
    /// over, and a `Reset` said so already.
    Connected {
        /// The resume point presented, if any.
        resume: Option<Resume>,
    },
    /// The session (or the attempt to start one) failed with a transient
    /// error; the next attempt starts after `delay`. Meanwhile the list
    /// keeps its last state, which goes stale: a UI says "reconnecting…".
    Retrying(Retry),
}

/// A live server list that survives lost connections: a [`Stream`] of
/// [`ReconnectEvent`]s that also offers the current list, made by
/// [`Reconnect::browse`].
///
/// It connects when first polled, and whenever a session fails with a
/// [transient](ClientError::is_transient) error it yields
/// [`ReconnectEvent::Retrying`], waits a [`Backoff`] delay, connects again
/// and resumes with the list's resume point, so that a resumed session
/// receives only what changed. A final error is yielded as `Err`, after
/// which the stream ends. Like a `Browse`, it reads only while polled.
#[derive(Debug)]
pub struct ReconnectingBrowse {
    reconnect: Reconnect,
    delays: Delays,
    /// The list, kept across sessions.
    browser: Browser,
    phase: Phase,
    /// Created on first use, inside the runtime.
    timer: Option<Timer>,
    /// Events of this helper's own, delivered before the browser's next.
    queued: VecDeque<ReconnectEvent>,
    /// The final error, yielded once before the stream ends.
    error: Option<ClientError>,
}

#[derive(Debug)]
enum Phase {
    /// Start a connection attempt now.
    Connect,
    /// Backing off until then.
    Waiting(Instant),
    /// The QUIC handshake, until the deadline.
    Connecting(Connecting, Instant),
    /// Connected: the session stream, Hello, Welcome, the list.
    Session(Session),
    /// Failed for good, or closed.
    Ended,
}

#[derive(Debug)]
struct Session {
    connection: Connection,
    /// Opened on the first poll after the handshake.
    streams: Option<(SendStream, RecvStream)>,
    out: Outbox,
    welcomed: bool,
    resume: Option<Resume>,
}

impl Session {
    fn new(connection: Connection) -> Self {
        Session { connection, streams: None, out: Outbox::default(), welcomed: false, resume: None }
    }

    /// The next event of this session, or why it ended.
    fn poll_event(&mut self, cx: &mut Context<'_>, browser: &mut Browser) -> Poll<Result<ReconnectEvent, ClientError>> {
        let (send, recv) = match &mut self.streams {
            Some((send, recv)) => (send, recv),
            streams @ None => {
                // Polled afresh each time: opening a stream is cancel-safe.
                let opened = ready!(pin!(self.connection.open_bi()).poll(cx))?;
                // What the Hello presents, as the Browser will send it.
                self.resume = browser.resume_point();
                self.out.refill(|buf| browser.poll_transmit(Instant::now(), buf));
                let (send, recv) = streams.insert(opened);
                (send, recv)
            }
        };
        // The Hello is a few bytes; while the stream cannot take it, its
        // writability wakes the task.
        if let Poll::Ready(Err(e)) = self.out.poll_write(cx, send) {
            return Poll::Ready(Err(e.into()));
        }
        loop {
            // Connected goes out before any event of the session it starts.
            if !self.welcomed && browser.welcome().is_some() {
                self.welcomed = true;
                return Poll::Ready(Ok(ReconnectEvent::Connected { resume: self.resume }));
            }
            match browser.poll_event() {
                Some(BrowserEvent::Rejected { code, reason }) => {
                    return Poll::Ready(Err(ClientError::Rejected { code, reason }))
                }
                Some(event) => return Poll::Ready(Ok(ReconnectEvent::Browser(event))),
                None => {}
            }
            ready!(poll_browser_input(cx, recv, browser))?;
        }
    }
}

impl ReconnectingBrowse {
    /// The current list, in no particular order: while reconnecting, the
    /// last session's (or empty, if it never completed a snapshot).
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &Server> + '_ {
        self.browser.servers()
    }

    /// The entry for `address`, if listed.
    pub fn server(&self, address: &SocketAddr) -> Option<&Server> {
        self.browser.server(address)
    }

    /// Whether a session is up and its list complete: a snapshot completed
    /// in it, or in the session it resumed (whose changes since may still be
    /// on their way until the next `Synced`). False while reconnecting.
    pub fn is_synced(&self) -> bool {
        self.browser.is_synced()
    }

    /// Whether a session is established (its Welcome arrived).
    pub fn is_connected(&self) -> bool {
        matches!(&self.phase, Phase::Session(session) if session.welcomed)
    }

    /// Where the next session resumes from.
    pub fn resume_point(&self) -> Option<Resume> {
        self.browser.resume_point()
    }

    /// The current session's Welcome, if one is established.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.browser.welcome()
    }

    /// The state machine with the list, e.g. to hand it to your own driver.
    pub fn into_browser(self) -> Browser {
        self.browser
    }

    /// Ends the session: says Goodbye if one is up, waits briefly for the
    /// meta server to close the connection (so the Goodbye is not lost), and
    /// closes it. Best effort: a connection that is gone already has no
    /// session left to end. Wait on the endpoint before exiting.
    pub async fn close(mut self) {
        let Phase::Session(mut session) = std::mem::replace(&mut self.phase, Phase::Ended) else { return };
        if let Some((send, _recv)) = session.streams.as_mut() {
            let browser = &mut self.browser;
            browser.shutdown(Instant::now());
            let sent = poll_fn(|cx| session.out.poll_flush(cx, send, |buf| browser.poll_transmit(Instant::now(), buf)));
            if sent.await.is_ok() {
                let _ = send.finish();
                let runtime = &self.reconnect.runtime;
                let mut timer = Timer::new(&**runtime);
                let _ = race(session.connection.closed(), timer.sleep_until(runtime.now() + GOODBYE_LINGER)).await;
            }
        }
        session.connection.close(VarInt::from_u32(0), b"goodbye");
    }

    /// Handles the end of a session or attempt: a final error ends the
    /// stream; a transient one schedules the next attempt.
    fn fail(&mut self, error: ClientError) {
        if let Phase::Session(session) = &self.phase {
            close_after(&session.connection, &error);
        }
        let retry = match self.reconnect.retry(error, &mut self.delays) {
            Ok(retry) => retry,
            Err(error) => {
                self.phase = Phase::Ended;
                self.error = Some(error);
                return;
            }
        };
        self.phase = Phase::Waiting(self.reconnect.runtime.now() + retry.delay);
        self.queued.push_back(ReconnectEvent::Retrying(retry));
        // A new session for the next connection: it keeps the list if it can
        // resume; otherwise it starts empty, and says so for anyone mirroring
        // the list from the events.
        let previous = std::mem::replace(&mut self.browser, Browser::new(BrowseOptions::new(String::new())));
        let listed = previous.servers().len() > 0;
        self.browser = previous.reconnect();
        if listed && self.browser.servers().len() == 0 {
            self.queued.push_back(ReconnectEvent::Browser(BrowserEvent::Reset));
        }
    }
}

impl Stream for ReconnectingBrowse {
    type Item = Result<ReconnectEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let runtime = &this.reconnect.runtime;
            match &mut this.phase {
                Phase::Ended => return Poll::Ready(this.error.take().map(Err)),
                Phase::Connect => {
                    let reconnect = &this.reconnect;
                    match reconnect.endpoint.connect(reconnect.server, &reconnect.server_name) {
                        Ok(connecting) => {
                            this.phase = Phase::Connecting(connecting, runtime.now() + reconnect.connect_timeout)
                        }
                        Err(error) => this.fail(error.into()),
                    }
                }
                Phase::Waiting(until) => {
                    let until = *until;
                    ready!(this.timer.get_or_insert_with(|| Timer::new(&**runtime)).poll_at(cx, Some(until)));
                    this.phase = Phase::Connect;
                }
                Phase::Connecting(connecting, deadline) => match Pin::new(connecting).poll(cx) {
                    Poll::Ready(Ok(connection)) => this.phase = Phase::Session(Session::new(connection)),
                    Poll::Ready(Err(error)) => this.fail(error.into()),
                    Poll::Pending => {
                        let deadline = *deadline;
                        ready!(this.timer.get_or_insert_with(|| Timer::new(&**runtime)).poll_at(cx, Some(deadline)));
                        this.fail(ClientError::ConnectTimeout(this.reconnect.connect_timeout));
                    }
                },
                Phase::Session(session) => match ready!(session.poll_event(cx, &mut this.browser)) {
                    Ok(event) => {
                        if let ReconnectEvent::Connected { .. } = event {
                            this.delays.reset();
                        }
                        return Poll::Ready(Some(Ok(event)));
                    }
                    Err(error) => this.fail(error),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metaserve_proto::ErrorCode;
    use quinn::{ConnectError, ConnectionError};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_and_start_over_after_a_reset() {
        let backoff = Backoff { jitter: 0.0, ..Backoff::default() };
        let mut delays = backoff.delays();
        let first: Vec<Duration> = delays.by_ref().take(9).collect();
        assert_eq!(
            first,
            [250 * MS, 500 * MS, 1000 * MS, 2000 * MS, 4000 * MS, 8000 * MS, 15000 * MS, 15000 * MS, 15000 * MS]
        );
        assert_eq!(delays.failures(), 9);
        delays.reset();
        assert_eq!(delays.next_delay(), 250 * MS);
        // Far past the cap, nothing overflows.
        assert_eq!(backoff.nominal(u32::MAX), backoff.max);
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction_and_spreads_clients_apart() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(0, 0.0), 250 * MS);
        assert_eq!(backoff.delay(0, 0.999_999), backoff.nominal(0).mul_f64(1.0 - 0.5 * 0.999_999));
        let mut delays = backoff.delays();
        for retry in 0..20 {
            let delay = delays.next_delay();
            let nominal = backoff.nominal(retry);
            assert!(delay <= nominal && delay >= nominal / 2, "retry {retry}: {delay:?} of {nominal:?}");
        }
        // A thousand clients failing at once do not all wait the same.
        let firsts: std::collections::HashSet<Duration> = (0..1000).map(|_| backoff.delays().next_delay()).collect();
        assert!(firsts.len() > 900, "only {} distinct first delays", firsts.len());
    }

    #[test]
    fn odd_knobs_are_tamed() {
        let constant = Backoff { multiplier: 0.5, jitter: 0.0, ..Backoff::default() };
        assert_eq!(constant.nominal(5), 250 * MS);
        let nan = Backoff { multiplier: f64::NAN, jitter: f64::NAN, ..Backoff::default() };
        assert_eq!(nan.delay(5, 0.7), 250 * MS);
        let full = Backoff { jitter: 7.0, ..Backoff::default() };
        assert_eq!(full.delay(0, 0.5), 125 * MS);
        let small_cap = Backoff { initial: Duration::from_secs(60), ..Backoff::default() };
        assert_eq!(small_cap.nominal(0), small_cap.max);
    }

    #[test]
    fn which_codes_are_retried() {
        let rejected = |code| ClientError::Rejected { code, reason: String::new() };
        let transient = [
            ErrorCode::NO_ERROR,
            ErrorCode::HANDSHAKE_TIMEOUT,
            ErrorCode::IP_LIMIT,
            ErrorCode::SERVER_FULL,
            ErrorCode::NAMESPACE_LIMIT,
            ErrorCode::HEARTBEAT_TIMEOUT,
            ErrorCode::SHUTTING_DOWN,
            ErrorCode(0x4242),
        ];
        for code in ErrorCode::ALL.iter().copied().chain([ErrorCode(0x4242)]) {
            assert_eq!(rejected(code).is_transient(), transient.contains(&code), "{code}");
        }
        let lost = ClientError::ConnectionLost;
        assert!(lost(ConnectionError::TimedOut).is_transient());
        assert!(lost(ConnectionError::Reset).is_transient());
        assert!(!lost(ConnectionError::LocallyClosed).is_transient());
        assert!(!lost(ConnectionError::VersionMismatch).is_transient());
        assert!(ClientError::StreamEnded.is_transient());
        assert!(ClientError::ConnectTimeout(Duration::from_secs(5)).is_transient());
        assert!(!ClientError::Connect(ConnectError::InvalidServerName("".into())).is_transient());
        assert!(!ClientError::Protocol(metaserve_proto::Error::ListTooLarge { max: 1 }).is_transient());
        assert!(!ClientError::Protocol(metaserve_proto::Error::BlobTooLarge { len: 2, max: 1 }).is_transient());
    }

    #[test]
    fn the_futures_and_the_stream_can_be_spawned() {
        fn send<T: Send>(_: &T) {}
        fn with(reconnect: &Reconnect) {
            send(&reconnect.connect());
            send(&reconnect.publish(PublishOptions::new("game"), futures_core_stream()));
            send(&reconnect.browse(BrowseOptions::new("game")));
        }
        let _ = with;
    }

    /// Some `Send` stream of heartbeats, for type checks only.
    fn futures_core_stream() -> impl Stream<Item = Bytes> + Send {
        struct Empty;
        impl Stream for Empty {
            type Item = Bytes;
            fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Bytes>> {
                Poll::Ready(None)
            }
        }
        Empty
    }
}
