//! The meta server: one [`Registry`] holds every namespace and every
//! connection's session, keyed by [`ConnectionHandle`].
//!
//! The driver owns the connections. For each one it calls [`Registry::accept`]
//! once, feeds what it reads to [`Registry::handle_input`], pulls output with
//! [`Registry::poll_transmit`] whenever the stream can take more, and calls
//! [`Registry::remove`] when the connection is gone. Registry-wide timers
//! (handshake and heartbeat timeouts) go through [`Registry::poll_timeout`] and
//! [`Registry::handle_timeout`]; a browser's next update through
//! [`Registry::poll_connection_timeout`]. Connections the registry decides to
//! close are reported by [`Registry::poll_event`].
//!
//! # Invariant policy
//!
//! - **What the driver may legitimately do is handled, as each method
//!   documents.** A handle it still holds after [`Registry::remove`], or one
//!   otherwise unknown, is ignored: input and removal do nothing, output
//!   and introspection return nothing. Input, a stream's end or a timer for
//!   a session that is already closing is ignored too.
//! - **What is impossible by construction is asserted, with a harmless
//!   fallback.** The registry's own indices always resolve: a session index
//!   it holds (behind a live handle, in a namespace's owners, passed between
//!   its own methods) names a session; a session's IP has a tally, and so
//!   has its network while it awaits its Hello; a publisher's or browser's
//!   namespace exists, and so does the namespace a name maps to. Code that
//!   relies on one of these `debug_assert!`s it with a message naming the
//!   invariant, and in a release build does nothing instead of panicking: a
//!   bug must not become a crash a peer can trigger, so there is no
//!   `unreachable!`.
//!   [`Registry::check_invariants`] verifies the same invariants over the
//!   whole registry; the tests, proptests, model and simulation tests and
//!   the registry fuzz target call it.

mod admission;
mod bans;
mod counters;
mod invariants;
mod log;
mod session;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use crate::config::RegistryConfig;
use crate::decoder::FrameDecoder;
use crate::error::{Error, ErrorCode};
use crate::frame::{Frame, Hello, Reject, Role};
use crate::{varint, Server};
use admission::{entry_key, network_of};
use log::{Cursor, Log, Upserted};
use session::{Browsing, Publishing, Session, State};

pub use bans::{Ban, BanTarget, BanTargetError};
pub use counters::{CodeCounts, Counters};

/// Identifies one connection's session in a [`Registry`].
///
/// Handles are never reused for a different connection: a handle whose
/// session was removed is ignored by every method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    index: u32,
    generation: u32,
}

impl ConnectionHandle {
    /// This handle's session, or `None` if it was removed (its slot may
    /// hold a newer connection's session by now).
    fn session(self, sessions: &Slab<Session>) -> Option<&Session> {
        sessions.get(self.index as usize).filter(|s| s.generation == self.generation)
    }

    /// Like [`ConnectionHandle::session`], to change it.
    fn session_mut(self, sessions: &mut Slab<Session>) -> Option<&mut Session> {
        sessions.get_mut(self.index as usize).filter(|s| s.generation == self.generation)
    }
}

impl fmt::Display for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// What the registry reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A Hello was accepted.
    Accepted {
        /// The connection.
        connection: ConnectionHandle,
        /// What it asked to be.
        role: Role,
        /// Its namespace.
        namespace: Arc<str>,
        /// For publishers, the address browsers see; for browsers, the peer address.
        address: SocketAddr,
        /// Whether a browser's resume request was honoured.
        resumed: bool,
    },
    /// The registry ended this connection's session. The driver follows
    /// the final-frame contract: it sends what [`Registry::poll_transmit`]
    /// still yields (a Welcome that was due, then the Reject of an error
    /// close), finishes its sending half of the stream, waits — for a
    /// bounded time — until the peer has acknowledged those bytes, and only
    /// then closes the QUIC connection with `code` and `reason` (which
    /// [`Registry::poll_close`] also returns once the final frames are
    /// taken), and calls [`Registry::remove`]. A connection that never
    /// opened its stream is closed at once.
    Closed {
        /// The connection.
        connection: ConnectionHandle,
        /// The application error code to close with.
        code: ErrorCode,
        /// The reason phrase to close with.
        reason: String,
    },
}

/// Counts describing a registry at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connected publishers.
    pub publishers: usize,
    /// Connected browsers.
    pub browsers: usize,
    /// Connections that have not sent Hello yet.
    pub handshakes: usize,
    /// Namespaces in existence.
    pub namespaces: usize,
    /// Live entries across all namespaces.
    pub entries: usize,
    /// Tombstones kept for resuming browsers.
    pub tombstones: usize,
    /// Placeholders kept for browsers' cursors; at most one per browser.
    pub ghosts: usize,
    /// Newest revision handed out.
    pub revision: u64,
    /// Heartbeats that changed an entry, since the registry was created.
    pub heartbeats_applied: u64,
    /// Heartbeats identical to the entry's blob (TTL refreshes), since creation.
    pub heartbeats_unchanged: u64,
}

/// One namespace as seen by [`Registry::namespaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Its name.
    pub name: Arc<str>,
    /// Connected publishers.
    pub publishers: usize,
    /// Connected browsers.
    pub browsers: usize,
    /// Live entries.
    pub entries: usize,
    /// Tombstones kept for resuming browsers: at most
    /// [`RegistryConfig::max_tombstones`] (the value in force at the
    /// namespace's last removal).
    pub tombstones: usize,
    /// Newest revision in the namespace.
    pub revision: u64,
}

/// One live entry as seen by [`Registry::entries`]: what a browser receives,
/// plus when this version was published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// Where players reach the game server (see [`Server::address`]).
    pub address: SocketAddr,
    /// Whether the port was declared by the game server (else observed).
    pub port_declared: bool,
    /// The game's heartbeat, opaque to metaserve.
    pub blob: Bytes,
    /// The registry revision of this version of the entry.
    pub revision: u64,
    /// When the heartbeat that made this version arrived (the `now` passed
    /// to [`Registry::handle_input`]). Heartbeats that repeat the blob do
    /// not move it.
    pub changed: Instant,
}

#[derive(Debug)]
struct Namespace {
    name: Arc<str>,
    log: Log,
    /// Entry key → index of the session that publishes it.
    owners: HashMap<SocketAddr, usize>,
    publishers: usize,
    browsers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Closes a session still without Hello.
    Handshake,
    /// Closes a publisher without heartbeat for the entry TTL.
    EntryTtl,
}

#[derive(Debug, Default)]
struct PerIp {
    publishers: usize,
    browsers: usize,
    /// Connections before their Hello.
    handshakes: usize,
}

/// The meta server's state machine: namespaces, their revision logs, and one
/// session per connection. No I/O, no clock, no threads.
///
/// ```
/// use std::net::SocketAddr;
/// use std::time::Instant;
/// use metaserve_proto::{Browser, BrowserConfig, BrowserEvent, Publisher, PublisherConfig, Registry, RegistryConfig};
///
/// let now = Instant::now();
/// let mut registry = Registry::new(RegistryConfig::default(), 42);
/// let game: SocketAddr = "192.0.2.7:27960".parse().unwrap();
/// let player: SocketAddr = "198.51.100.1:50000".parse().unwrap();
///
/// // A game server publishes its heartbeat.
/// let mut publisher = Publisher::new(PublisherConfig::new("quake3"), now);
/// publisher.set_heartbeat("name=Fragfest;map=q3dm17".into(), now).unwrap();
/// let conn = registry.accept(now, game).unwrap();
/// let mut wire = Vec::new();
/// while publisher.poll_transmit(now, &mut wire) {}
/// registry.handle_input(conn, now, &wire).unwrap();
///
/// // A game client browses the namespace.
/// let mut browser = Browser::new(BrowserConfig::new("quake3"));
/// let conn = registry.accept(now, player).unwrap();
/// wire.clear();
/// while browser.poll_transmit(now, &mut wire) {}
/// registry.handle_input(conn, now, &wire).unwrap();
/// wire.clear();
/// while registry.poll_transmit(conn, now, &mut wire) {}
/// browser.handle_input(now, &wire).unwrap();
///
/// let servers: Vec<_> = browser.servers().collect();
/// assert_eq!(servers.len(), 1);
/// assert_eq!(servers[0].address, game);
/// assert_eq!(&servers[0].blob[..], b"name=Fragfest;map=q3dm17");
/// ```
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    epoch: u64,
    revision: u64,
    sessions: Slab<Session>,
    next_generation: u32,
    namespaces: Slab<Namespace>,
    namespace_ids: HashMap<Arc<str>, usize>,
    per_ip: HashMap<IpAddr, PerIp>,
    /// Connections before their Hello, per network (see [`network_of`]).
    handshakes_per_network: HashMap<IpAddr, usize>,
    /// Namespaces with at least one publisher: what `max_namespaces` bounds.
    published_namespaces: usize,
    tokens: HashMap<Box<str>, Vec<Bytes>>,
    /// (deadline, session index, generation, kind): a handshake timer per
    /// session until it fires, and one TTL timer per publisher, re-armed
    /// lazily when it fires (so a heartbeat costs no heap operation).
    timers: BinaryHeap<Reverse<(Instant, usize, u32, TimerKind)>>,
    events: VecDeque<Event>,
    stats: Stats,
    next_publisher_id: u64,
    shutting_down: bool,
    bans: bans::BanList,
    counters: Counters,
}

fn deadline(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after)
}

// Construction and getters.
impl Registry {
    /// A registry with `config`, identified by `epoch`.
    ///
    /// Browsers resume only within one epoch, so pick a value that differs
    /// every time a registry is created (random, or the start time in
    /// nanoseconds); a registry that reused an epoch would accept cursors
    /// from its predecessor. The value is reduced to 62 bits; 0 becomes 1.
    pub fn new(config: RegistryConfig, epoch: u64) -> Self {
        Registry {
            config,
            epoch: (epoch & varint::MAX).max(1),
            revision: 0,
            sessions: Slab::new(),
            next_generation: 0,
            namespaces: Slab::new(),
            namespace_ids: HashMap::new(),
            per_ip: HashMap::new(),
            handshakes_per_network: HashMap::new(),
            published_namespaces: 0,
            tokens: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            next_publisher_id: 1,
            shutting_down: false,
            bans: bans::BanList::default(),
            counters: Counters::default(),
        }
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// This registry's epoch, carried by every Welcome. A resume point is
    /// meaningful only in the namespace that issued it.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ban list in force, as last set.
    #[must_use]
    pub fn bans(&self) -> &[Ban] {
        self.bans.bans()
    }
}

// Input: connections, bytes, stream ends and time.
impl Registry {
    /// Registers a new connection from `peer`, which must send Hello within
    /// the handshake timeout.
    ///
    /// Fails with [`Error::ShuttingDown`] after [`Registry::shutdown`], with
    /// [`Error::Banned`] when a ban in force covers `peer`, and with
    /// [`Error::ServerFull`] when `max_handshakes` connections are already
    /// waiting for their Hello, and with [`Error::HandshakeLimit`]
    /// (`IP_LIMIT`) when `max_handshakes_per_ip` of them come from `peer`'s
    /// IP address or `max_handshakes_per_network` from its network; the
    /// driver closes the connection with the error's code. Refusals are counted in [`Counters::refused`].
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnectionHandle, Error> {
        let result = self.accept_session(now, peer);
        if let Err(error) = &result {
            self.counters.refused.add(error.code());
        }
        result
    }

    /// Feeds bytes read from the connection's stream, cut anywhere.
    ///
    /// An error means the registry closed the connection: it is also
    /// reported as [`Event::Closed`], and the session's other connections'
    /// data is untouched. Input for a closing or unknown connection is ignored.
    pub fn handle_input(&mut self, connection: ConnectionHandle, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let Some(session) = connection.session_mut(&mut self.sessions) else { return Ok(()) };
        if session.is_closing() {
            return Ok(());
        }
        let idx = connection.index as usize;
        // The decoder is taken out so that frames can update the registry.
        let mut decoder = std::mem::replace(&mut session.decoder, FrameDecoder::new(0));
        let result = decoder.decode(bytes, |frame| self.on_frame(idx, now, frame));
        match self.sessions.get_mut(idx) {
            Some(session) => {
                session.decoder = decoder;
                if result.is_err() && session.is_closing() {
                    // Closed by an earlier frame of this input (Goodbye): what
                    // follows is ignored, like any input for a closing connection.
                    return Ok(());
                }
            }
            None => debug_assert!(false, "invariant: only `remove` removes a session, never its frames"),
        }
        if let Err(error) = &result {
            self.close_session(idx, Some(error.clone()));
        }
        result
    }

    /// The client finished its session stream (a QUIC FIN). Ending between
    /// frames is a graceful end, like Goodbye: the session closes with
    /// `NO_ERROR` ("session stream finished"). Ending inside a frame is a
    /// protocol violation: [`Error::StreamEndedInFrame`] is returned and the
    /// session closes with `PROTOCOL_VIOLATION`. Either way the close is
    /// reported as [`Event::Closed`]; a closing or unknown connection is ignored.
    pub fn handle_finish(&mut self, connection: ConnectionHandle) -> Result<(), Error> {
        let Some(session) = connection.session(&self.sessions) else { return Ok(()) };
        if session.is_closing() {
            return Ok(());
        }
        let idx = connection.index as usize;
        match session.decoder.buffered() {
            0 => {
                self.close_session_with(idx, None, "session stream finished");
                Ok(())
            }
            buffered => {
                let error = Error::StreamEndedInFrame { buffered };
                self.close_session(idx, Some(error.clone()));
                Err(error)
            }
        }
    }

    /// Closes connections whose handshake or heartbeat timed out by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, idx, generation, kind))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(session) = self.sessions.get(idx).filter(|s| s.generation == generation) else {
                continue;
            };
            match (&session.state, kind) {
                (State::Handshaking, TimerKind::Handshake) => self.close_session(idx, Some(Error::HandshakeTimeout)),
                (State::Publisher(p), TimerKind::EntryTtl) => match deadline(p.last_seen, p.entry_ttl) {
                    Some(expiry) if expiry <= now => self.close_session(idx, Some(Error::HeartbeatTimeout)),
                    Some(expiry) => self.timers.push(Reverse((expiry, idx, generation, kind))),
                    None => {}
                },
                _ => {} // the session has moved on since the timer was set
            }
        }
        // Timers of removed sessions stay queued until due; keep them bounded.
        if self.timers.len() > 2 * self.sessions.len() + 64 {
            let sessions = &self.sessions;
            self.timers.retain(|Reverse((_, idx, generation, kind))| {
                sessions.get(*idx).is_some_and(|s| {
                    s.generation == *generation
                        && matches!(
                            (&s.state, kind),
                            (State::Handshaking, TimerKind::Handshake) | (State::Publisher(_), TimerKind::EntryTtl)
                        )
                })
            });
        }
    }
}

// Mutators: configuration, bans, shutdown, removal.
impl Registry {
    /// Replaces the configuration. What changes, and when:
    ///
    /// - **New connections and Hellos** get every new value: handshake
    ///   timeout, frame size (from the max blob size, namespace and token
    ///   lengths), all session and namespace limits, and the values of their
    ///   Welcome.
    /// - **Existing publishers keep the max blob size and entry TTL their
    ///   Welcome promised** (a publisher paces its refreshes by that TTL); the
    ///   heartbeat interval is advice given in the Welcome, so it too changes
    ///   for new sessions only. A connection's frame size is fixed when it is
    ///   accepted, so one accepted before a raised max blob size and saying
    ///   Hello after it is promised only the blob size its frames can carry.
    /// - **Existing browsers** follow a new update interval from their next
    ///   batch on.
    /// - **Limits on counts** (per IP, in total, namespaces, handshakes) are
    ///   checked when a session starts: lowering one closes no session.
    /// - **Max tombstones** applies at the next removal in each namespace,
    ///   **transmit chunk** at the next [`Registry::poll_transmit`].
    pub fn set_config(&mut self, config: RegistryConfig) {
        self.config = config;
    }

    /// Requires publishers of `namespace` to present one of `tokens`. An empty
    /// list lifts the requirement. Takes effect for Hellos from now on.
    pub fn set_publish_tokens<T: AsRef<[u8]>>(&mut self, namespace: &str, tokens: impl IntoIterator<Item = T>) {
        let tokens: Vec<Bytes> = tokens.into_iter().map(|t| Bytes::copy_from_slice(t.as_ref())).collect();
        if tokens.is_empty() {
            self.tokens.remove(namespace);
        } else {
            self.tokens.insert(namespace.into(), tokens);
        }
    }

    /// Replaces the ban list. Connections from a banned address are refused
    /// by [`Registry::accept`] with [`Error::Banned`] (`BANNED`), and so are
    /// publishers whose entry address (with a declared port) is banned.
    /// Sessions already open whose peer address or entry address is covered
    /// by a ban in force at `now` are closed with `BANNED` and the ban's
    /// reason ([`Event::Closed`]); their entries are removed. A ban lapses at
    /// its expiry; lapsed bans stay in the list until it is replaced.
    /// Returns how many sessions were closed.
    pub fn set_bans(&mut self, now: Instant, bans: impl IntoIterator<Item = Ban>) -> usize {
        self.bans = bans::BanList::new(bans.into_iter().collect());
        let mut doomed = Vec::new();
        for (idx, session) in &self.sessions {
            let entry = match &session.state {
                State::Closing { .. } => continue,
                State::Publisher(p) => Some(p.key),
                State::Handshaking | State::Browser(_) => None,
            };
            let ban = self.bans.lookup(now, session.peer).or_else(|| entry.and_then(|e| self.bans.lookup(now, e)));
            if let Some(ban) = ban {
                doomed.push((idx, ban.reason.clone()));
            }
        }
        let closed = doomed.len();
        for (idx, reason) in doomed {
            self.close_session(idx, Some(Error::Banned { reason }));
        }
        closed
    }

    /// Closes every connection with `SHUTTING_DOWN` and refuses new ones.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        let open: Vec<usize> = self.sessions.iter().map(|(idx, _)| idx).collect();
        for idx in open {
            self.close_session(idx, Some(Error::ShuttingDown));
        }
    }

    /// The connection is gone (closed by either side): releases its session.
    /// Its entry, if it published one, is removed. An unknown connection
    /// (removed already) is ignored.
    pub fn remove(&mut self, connection: ConnectionHandle) {
        if connection.session(&self.sessions).is_none() {
            return;
        }
        let idx = connection.index as usize;
        let session = self.sessions.remove(idx);
        self.release(idx, session.peer.ip(), session.state);
    }
}

// Output: bytes, closes, deadlines and events.
impl Registry {
    /// Appends the connection's due output to `buf`; returns whether it wrote
    /// anything. Call it while the stream can take more and it returns true.
    /// An unknown connection has no output.
    ///
    /// Browsers get their changes here, built on demand from the revision log:
    /// a browser that does not read costs nothing but its cursor.
    #[must_use]
    pub fn poll_transmit(&mut self, connection: ConnectionHandle, now: Instant, buf: &mut Vec<u8>) -> bool {
        let Some(session) = connection.session_mut(&mut self.sessions) else { return false };
        let start = buf.len();
        match &mut session.state {
            State::Handshaking => {}
            State::Closing { tail, .. } => buf.append(tail),
            State::Publisher(p) => p.poll_welcome(&self.config, self.epoch, buf),
            State::Browser(b) => {
                let Some(ns) = self.namespaces.get_mut(b.ns) else {
                    debug_assert!(false, "invariant: a browser's namespace exists");
                    return false;
                };
                b.poll_transmit(&mut ns.log, &self.config, self.epoch, &mut self.counters, now, buf);
            }
        }
        buf.len() > start
    }

    /// Once this connection's session has ended and [`Registry::poll_transmit`]
    /// has yielded its final frames: the code and reason to close the QUIC
    /// connection with (see [`Event::Closed`] for the order of the driver's
    /// steps). `None` while the session is open, or its final frames are
    /// still to be taken, or the connection is unknown.
    #[must_use]
    pub fn poll_close(&self, connection: ConnectionHandle) -> Option<(ErrorCode, &str)> {
        connection.session(&self.sessions)?.close_reason()
    }

    /// When the connection next has output without new input: a browser's
    /// next update. `None` when only input can produce output, or the
    /// connection is unknown.
    #[must_use]
    pub fn poll_connection_timeout(&self, connection: ConnectionHandle) -> Option<Instant> {
        connection.session(&self.sessions)?.timeout()
    }

    /// The earliest registry-wide deadline (handshake or heartbeat timeout).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next event for the driver, if any. Drain after every call that
    /// takes input or time.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

// Introspection: read-only views of the registry.
impl Registry {
    /// Counts across the registry.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        stats.namespaces = self.namespaces.len();
        stats.revision = self.revision;
        for (_, ns) in &self.namespaces {
            stats.entries += ns.log.live();
            stats.tombstones += ns.log.tombstones();
            stats.ghosts += ns.log.ghosts();
        }
        stats
    }

    /// Every namespace with its counts.
    pub fn namespaces(&self) -> impl Iterator<Item = NamespaceInfo> + '_ {
        self.namespaces.iter().map(|(_, ns)| NamespaceInfo {
            name: ns.name.clone(),
            publishers: ns.publishers,
            browsers: ns.browsers,
            entries: ns.log.live(),
            tombstones: ns.log.tombstones(),
            revision: ns.log.last_rev(),
        })
    }

    /// The live entries of `namespace`, in revision order (oldest change first).
    pub fn servers(&self, namespace: &str) -> impl Iterator<Item = Server> + '_ {
        let log = self.namespace_named(namespace).map(|ns| &ns.log);
        log.into_iter().flat_map(Log::entries).map(|(revision, address, port_declared, blob)| Server {
            address,
            port_declared,
            blob: blob.clone(),
            revision,
        })
    }

    /// The live entries of `namespace` with the time each version was
    /// published, in revision order (oldest change first).
    pub fn entries(&self, namespace: &str) -> impl Iterator<Item = EntryInfo> + '_ {
        let log = self.namespace_named(namespace).map(|ns| &ns.log);
        log.into_iter().flat_map(Log::entries_changed).map(|(revision, address, port_declared, blob, changed)| {
            EntryInfo { address, port_declared, blob: blob.clone(), revision, changed }
        })
    }

    /// The newest revision of `namespace`, or `None` if it does not exist.
    /// Any change to its list (entry added, changed or removed) raises it.
    #[must_use]
    pub fn namespace_revision(&self, namespace: &str) -> Option<u64> {
        let ns = self.namespace_named(namespace)?;
        Some(ns.log.last_rev())
    }

    /// Monotonic counters since the registry was created.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes the registry holds for this one connection: the session record
    /// and its partial-frame buffer. A browser's is constant however far
    /// behind it falls, since the changes it has yet to receive are built
    /// from the shared log when it reads. `None` for an unknown connection.
    #[must_use]
    pub fn session_memory(&self, connection: ConnectionHandle) -> Option<usize> {
        Some(connection.session(&self.sessions)?.memory())
    }

    /// Nodes (entries, tombstones, ghosts) held by all revision logs.
    #[must_use]
    pub fn log_nodes(&self) -> usize {
        self.namespaces.iter().map(|(_, ns)| ns.log.nodes()).sum()
    }

    /// The ban in force at `now` that covers `addr`, if any.
    #[must_use]
    pub fn ban_for(&self, now: Instant, addr: SocketAddr) -> Option<&Ban> {
        self.bans.lookup(now, addr)
    }
}

// Internals: handles, frames, and a session's start and end.
impl Registry {
    fn accept_session(&mut self, now: Instant, peer: SocketAddr) -> Result<ConnectionHandle, Error> {
        self.admit_connection(now, peer)?;
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let (network, _) = network_of(peer.ip());
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.sessions.vacant_entry();
        let Ok(index) = u32::try_from(entry.key()) else {
            return Err(Error::ServerFull { what: "connections", max: u32::MAX as usize });
        };
        let idx = entry.key();
        let max_frame = self.config.max_frame_size();
        entry.insert(Session::new(generation, peer, max_frame));
        if let Some(at) = deadline(now, self.config.handshake_timeout) {
            self.timers.push(Reverse((at, idx, generation, TimerKind::Handshake)));
        }
        self.stats.handshakes += 1;
        self.per_ip.entry(peer.ip()).or_default().handshakes += 1;
        *self.handshakes_per_network.entry(network).or_default() += 1;
        Ok(ConnectionHandle { index, generation })
    }

    /// The handle of the session at `idx`, which must exist.
    fn handle_at(&self, idx: usize) -> ConnectionHandle {
        let generation = match self.sessions.get(idx) {
            Some(session) => session.generation,
            None => {
                debug_assert!(false, "invariant: the registry only holds indices of existing sessions");
                0
            }
        };
        ConnectionHandle { index: idx as u32, generation }
    }

    /// The namespace called `name`, if it exists.
    fn namespace_named(&self, name: &str) -> Option<&Namespace> {
        let ns = self.namespaces.get(*self.namespace_ids.get(name)?);
        debug_assert!(ns.is_some(), "invariant: every name in namespace_ids names a namespace");
        ns
    }

    fn on_frame(&mut self, idx: usize, now: Instant, frame: Frame<'_>) -> Result<(), Error> {
        let Some(session) = self.sessions.get_mut(idx) else {
            debug_assert!(false, "invariant: frames are decoded for an existing session");
            return Ok(());
        };
        let (peer, max_blob_decodable) = (session.peer, session.max_blob_decodable);
        match (&mut session.state, frame) {
            (State::Closing { .. }, _) | (_, Frame::Unknown { .. }) => Ok(()),
            (State::Handshaking, Frame::Hello(hello)) => self.on_hello(idx, peer, max_blob_decodable, now, hello),
            (_, Frame::Goodbye) => {
                self.close_session(idx, None);
                Ok(())
            }
            (State::Publisher(p), Frame::Heartbeat { blob }) => {
                if blob.len() > p.max_blob_size {
                    return Err(Error::BlobTooLarge { len: blob.len(), max: p.max_blob_size });
                }
                p.last_seen = now;
                let Some(ns) = self.namespaces.get_mut(p.ns) else {
                    debug_assert!(false, "invariant: a publisher's namespace exists");
                    return Ok(());
                };
                match ns.log.upsert(p.key, blob, p.port_declared, now, &mut self.revision) {
                    Upserted::Unchanged => self.stats.heartbeats_unchanged += 1,
                    Upserted::Inserted | Upserted::Updated => self.stats.heartbeats_applied += 1,
                    Upserted::Superseded => {
                        self.stats.heartbeats_applied += 1;
                        self.counters.heartbeats_coalesced += 1;
                    }
                }
                Ok(())
            }
            (state, frame) => Err(Error::UnexpectedFrame {
                frame: frame.frame_type(),
                context: match state {
                    State::Handshaking => "before Hello",
                    State::Publisher(_) => "from a publisher",
                    _ => "from a browser",
                },
            }),
        }
    }

    /// The Hello of the handshaking session at `idx`, from `peer`, whose
    /// frames carry blobs of at most `max_blob_decodable` bytes.
    fn on_hello(
        &mut self,
        idx: usize,
        peer: SocketAddr,
        max_blob_decodable: usize,
        now: Instant,
        hello: Hello<'_>,
    ) -> Result<(), Error> {
        self.admit_hello(now, peer, &hello)?;
        let ns_idx = self.namespace_for(hello.namespace);
        let Some(ns) = self.namespaces.get_mut(ns_idx) else {
            debug_assert!(false, "invariant: namespace_for returns an existing namespace");
            return Ok(());
        };
        self.stats.handshakes -= 1;
        Self::release_handshake(&mut self.handshakes_per_network, peer.ip());
        let per_ip = self.per_ip.entry(peer.ip()).or_default();
        per_ip.handshakes -= 1;
        let (state, address, resumed, replaced) = match hello.role {
            Role::Publisher => {
                let key = entry_key(peer, &hello);
                let id = self.next_publisher_id;
                self.next_publisher_id += 1;
                if ns.publishers == 0 {
                    self.published_namespaces += 1;
                }
                ns.publishers += 1;
                per_ip.publishers += 1;
                self.stats.publishers += 1;
                self.counters.publishers_accepted += 1;
                // The newest connection for an address takes over its entry.
                let replaced = ns.owners.insert(key, idx);
                let state = State::Publisher(Publishing {
                    ns: ns_idx,
                    id,
                    key,
                    port_declared: hello.declared_port.is_some(),
                    last_seen: now,
                    welcome_pending: true,
                    max_blob_size: self.config.max_blob_size.min(max_blob_decodable),
                    entry_ttl: self.config.entry_ttl,
                });
                (state, key, false, replaced)
            }
            Role::Browser => {
                ns.browsers += 1;
                per_ip.browsers += 1;
                self.stats.browsers += 1;
                self.counters.browsers_accepted += 1;
                let head = ns.log.last_rev();
                let resumable = hello
                    .resume
                    .filter(|r| r.epoch == self.epoch && r.cursor >= ns.log.floor() && r.cursor <= self.revision);
                let cursor = match resumable {
                    Some(r) => Cursor::resume(r.cursor),
                    None => Cursor::fresh(head),
                };
                let state = State::Browser(Browsing {
                    ns: ns_idx,
                    cursor,
                    welcome_pending: true,
                    reset_pending: hello.resume.is_some() && resumable.is_none(),
                    flushing: true,
                    next_flush: deadline(now, self.config.update_interval).unwrap_or(now),
                });
                (state, peer, resumable.is_some(), None)
            }
        };
        let namespace = ns.name.clone();
        match self.sessions.get_mut(idx) {
            Some(session) => session.state = state,
            None => debug_assert!(false, "invariant: a Hello is handled for an existing session"),
        }
        if hello.role == Role::Publisher {
            if let Some(at) = deadline(now, self.config.entry_ttl) {
                self.timers.push(Reverse((at, idx, self.handle_at(idx).generation, TimerKind::EntryTtl)));
            }
        }
        self.events.push_back(Event::Accepted {
            connection: self.handle_at(idx),
            role: hello.role,
            namespace,
            address,
            resumed,
        });
        if let Some(old) = replaced.filter(|&old| old != idx) {
            self.close_session(old, Some(Error::Replaced));
        }
        Ok(())
    }

    /// The namespace called `name`, created if needed. Its limit,
    /// `max_namespaces`, was checked with the Hello: it counts namespaces
    /// with publishers only.
    fn namespace_for(&mut self, name: &str) -> usize {
        if let Some(&idx) = self.namespace_ids.get(name) {
            return idx;
        }
        let name: Arc<str> = name.into();
        let idx = self.namespaces.insert(Namespace {
            name: name.clone(),
            // Revisions are registry-wide, so a re-created namespace's floor
            // lies above every cursor handed out by its previous incarnation.
            log: Log::new(self.revision),
            owners: HashMap::new(),
            publishers: 0,
            browsers: 0,
        });
        self.namespace_ids.insert(name, idx);
        idx
    }

    /// Moves the session to Closing, releases what it held, reports it.
    /// `None` is a graceful close (Goodbye).
    fn close_session(&mut self, idx: usize, error: Option<Error>) {
        self.close_session_with(idx, error, "goodbye");
    }

    /// Like `close_session`, naming the reason of a graceful close.
    fn close_session_with(&mut self, idx: usize, error: Option<Error>, graceful_reason: &str) {
        let Some(session) = self.sessions.get_mut(idx) else {
            debug_assert!(false, "invariant: the registry only closes existing sessions");
            return;
        };
        if session.is_closing() {
            return;
        }
        let (code, reason) = match &error {
            Some(error) => (error.code(), error.to_string()),
            None => (ErrorCode::NO_ERROR, graceful_reason.to_owned()),
        };
        self.counters.closed.add(code);
        if error.as_ref().is_some_and(counters::is_heartbeat_error) {
            self.counters.heartbeats_rejected.add(code);
        }
        let reject = error.is_some().then_some(Reject { code, reason: &reason });
        let tail = session.state.final_frames(&self.config, self.epoch, reject);
        let state = std::mem::replace(&mut session.state, State::Closing { tail, code, reason: reason.clone() });
        let ip = session.peer.ip();
        self.release(idx, ip, state);
        let connection = self.handle_at(idx);
        self.events.push_back(Event::Closed { connection, code, reason });
    }

    fn release(&mut self, idx: usize, ip: IpAddr, state: State) {
        let ns_idx = match state {
            State::Closing { .. } => return,
            State::Handshaking => {
                self.stats.handshakes -= 1;
                Self::release_handshake(&mut self.handshakes_per_network, ip);
                match self.per_ip.get_mut(&ip) {
                    Some(c) => {
                        c.handshakes -= 1;
                        if c.publishers == 0 && c.browsers == 0 && c.handshakes == 0 {
                            self.per_ip.remove(&ip);
                        }
                    }
                    None => debug_assert!(false, "invariant: a session's IP has a per-IP tally"),
                }
                return;
            }
            State::Publisher(p) => {
                self.stats.publishers -= 1;
                match self.per_ip.get_mut(&ip) {
                    Some(c) => c.publishers -= 1,
                    None => debug_assert!(false, "invariant: a session's IP has a per-IP tally"),
                }
                match self.namespaces.get_mut(p.ns) {
                    Some(ns) => {
                        ns.publishers -= 1;
                        if ns.publishers == 0 {
                            self.published_namespaces -= 1;
                        }
                        // A takeover may have given the entry to a newer session.
                        if ns.owners.get(&p.key) == Some(&idx) {
                            ns.owners.remove(&p.key);
                            ns.log.remove(&p.key, &mut self.revision, self.config.max_tombstones);
                        }
                    }
                    None => debug_assert!(false, "invariant: a publisher's namespace exists"),
                }
                p.ns
            }
            State::Browser(mut b) => {
                self.stats.browsers -= 1;
                match self.per_ip.get_mut(&ip) {
                    Some(c) => c.browsers -= 1,
                    None => debug_assert!(false, "invariant: a session's IP has a per-IP tally"),
                }
                match self.namespaces.get_mut(b.ns) {
                    Some(ns) => {
                        ns.browsers -= 1;
                        ns.log.release(&mut b.cursor);
                    }
                    None => debug_assert!(false, "invariant: a browser's namespace exists"),
                }
                b.ns
            }
        };
        if self.per_ip.get(&ip).is_some_and(|c| c.publishers == 0 && c.browsers == 0 && c.handshakes == 0) {
            self.per_ip.remove(&ip);
        }
        if self.namespaces.get(ns_idx).is_some_and(|ns| ns.publishers == 0 && ns.browsers == 0) {
            let ns = self.namespaces.remove(ns_idx);
            self.namespace_ids.remove(&ns.name);
        }
    }

    /// Counts one connection of `ip` out of the per-network handshake tally.
    fn release_handshake(per_network: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
        let (network, _) = network_of(ip);
        match per_network.get_mut(&network) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    per_network.remove(&network);
                }
            }
            None => debug_assert!(false, "invariant: a handshaking session's network has a handshake tally"),
        }
    }
}
