//! The meta server (`Registry`) driven by a structure-aware sequence of
//! operations across up to 16 connections and a handful of namespaces
//! (valid and invalid ones), under small configurable limits so that every
//! limit is hit.
//!
//! Each connection is a real `Publisher` or `Browser` state machine, or a raw
//! client; any of them can also have arbitrary frames or raw bytes injected
//! into its stream. Bytes travel in arbitrary chunks, time advances, timers
//! fire, connections are lost, say Goodbye, finish their stream (between
//! frames or inside one), reconnect (browsers resume), and the registry may
//! shut down. The harness drives the registry the way a
//! driver does (events drained after every call) and checks after every
//! step:
//! - `Registry::check_invariants()` holds;
//! - the registry revision and every namespace's revision never decrease;
//! - sizes stay within the configured limits: publishers, browsers, pending
//!   handshakes, namespaces, per-IP sessions, tombstones (at most
//!   `max_tombstones` per namespace, `NamespaceInfo::tombstones`), log nodes (entries + tombstones + at
//!   most one ghost per browser), and each connection's `session_memory`
//!   (its record plus at most one partial frame of `max_frame_size`);
//! - the counts in `stats()` and `namespaces()` match the sessions the
//!   driver learnt of through events;
//! - every entry belongs to a connected publisher (none to a closed
//!   connection), one publisher per key, and its blob is the last heartbeat
//!   that publisher's stream delivered;
//! - everything the registry sends decodes and follows the protocol:
//!   Welcome (with the registry's epoch and limits, and the publisher's key)
//!   or Reject first, Reject last and with the code and reason of the Closed
//!   event, browsers' revisions rising between Resets; real publishers and
//!   browsers accept it without error (except a browser's own
//!   `LIST_TOO_LARGE`);
//! - timers fire: after `handle_timeout(now)` no session is left past its
//!   handshake timeout or entry TTL, and `poll_timeout` lies in the future;
//! - a browser pumped until it is quiescent is Synced at its namespace's
//!   head, and its list equals `registry.servers(namespace)`.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metaserve_fuzz::{chunks, decode_valid, trace, ArbFrame};
use metaserve_proto::frame::{Frame, MAX_HEADER_LEN};
use metaserve_proto::{
    Browser, BrowserConfig, BrowserEvent, ConnectionHandle, Error, ErrorCode, Event, FrameDecoder, Publisher,
    PublisherConfig, PublisherEvent, Registry, RegistryConfig, Role, Server,
};

const SLOTS: usize = 16;
/// Valid names most of the time, then invalid ones (empty, control character).
const NAMESPACES: [&str; 8] = ["q3", "q3", "xon", "xon", "openarena", "\u{fc}n\u{ef}", "", "bad\u{7}name"];
const TOKENS: [&[u8]; 4] = [b"", b"k", b"wrong", b"0123456789abcdef"];
const IPS: [&str; 4] = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "::ffff:192.0.2.1"];
const PORTS: [u16; 3] = [27960, 27961, 5000];

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    knobs: Knobs,
    ops: Vec<Op<'a>>,
}

#[derive(Debug, Arbitrary)]
struct Knobs {
    max_blob: u8,
    heartbeat_ms: u16,
    update_ms: u16,
    ttl_ms: u16,
    handshake_ms: u16,
    publishers_per_ip: u8,
    browsers_per_ip: u8,
    publishers: u8,
    browsers: u8,
    handshakes: u8,
    namespaces: u8,
    namespace_len: u8,
    tombstones: u8,
    token_len: u8,
    chunk: u16,
}

impl Knobs {
    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            max_blob_size: usize::from(self.max_blob % 65),
            heartbeat_interval: Duration::from_millis(u64::from(self.heartbeat_ms % 1000)),
            update_interval: Duration::from_millis(u64::from(self.update_ms % 1000)),
            entry_ttl: Duration::from_millis(1 + u64::from(self.ttl_ms % 5000)),
            handshake_timeout: Duration::from_millis(1 + u64::from(self.handshake_ms % 5000)),
            max_publishers_per_ip: 1 + usize::from(self.publishers_per_ip % 4),
            max_browsers_per_ip: 1 + usize::from(self.browsers_per_ip % 4),
            max_publishers: 1 + usize::from(self.publishers % 8),
            max_browsers: 1 + usize::from(self.browsers % 8),
            max_handshakes: 1 + usize::from(self.handshakes % 8),
            // The knob's higher bits, so that the seed corpus keeps its layout.
            max_handshakes_per_ip: 1 + usize::from(self.handshakes / 8 % 8),
            max_handshakes_per_network: 1 + usize::from(self.handshakes / 64),
            max_namespaces: 1 + usize::from(self.namespaces % 3),
            // Usually roomy enough for the valid names; sometimes not even for "q3".
            max_namespace_len: if self.namespace_len < 64 { 1 + usize::from(self.namespace_len % 12) } else { 64 },
            max_tombstones: usize::from(self.tombstones % 5),
            max_token_len: usize::from(self.token_len % 9),
            transmit_chunk: 1 + usize::from(self.chunk % 512),
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct Peer {
    ip: u8,
    port: u8,
}

impl Peer {
    fn addr(self) -> SocketAddr {
        let ip: IpAddr = IPS[usize::from(self.ip) % IPS.len()].parse().unwrap();
        SocketAddr::new(ip, PORTS[usize::from(self.port) % PORTS.len()])
    }
}

/// Connections are named by a selector: among the open ones for most
/// operations; for new connections, the first free slot, or (high bit set)
/// any slot, replacing the connection there (lost without a word).
#[derive(Debug, Arbitrary)]
enum Op<'a> {
    Publisher {
        slot: u8,
        peer: Peer,
        ns: u8,
        declared_port: u8,
        token: u8,
        blob: Vec<u8>,
    },
    Browser {
        slot: u8,
        peer: Peer,
        ns: u8,
        max_entries: u8,
    },
    RawClient {
        slot: u8,
        peer: Peer,
    },
    SetHeartbeat {
        slot: u8,
        blob: Vec<u8>,
    },
    SetSmall {
        slot: u8,
        b: u8,
    },
    /// The client's output (plus anything injected) to the registry, cut at these points.
    Send {
        slot: u8,
        cuts: &'a [u8],
    },
    /// The registry's output to the client, cut at these points.
    Receive {
        slot: u8,
        cuts: &'a [u8],
    },
    /// Injects raw bytes into the connection's stream.
    Raw {
        slot: u8,
        bytes: &'a [u8],
    },
    /// Injects any frame into the connection's stream.
    Frame {
        slot: u8,
        frame: ArbFrame,
    },
    /// Pumps a browser until quiescent, then compares its list with the registry's.
    Sync {
        slot: u8,
    },
    /// One round of `Send` and `Receive` without cuts.
    Pump {
        slot: u8,
    },
    /// One round of `Pump` on every connection.
    PumpAll,
    /// Time passes, in steps of 10 ms.
    Advance {
        tens_of_ms: u8,
    },
    AdvanceLong {
        ms: u16,
    },
    Timeout,
    /// The connection is lost: `Registry::remove`.
    Close {
        slot: u8,
    },
    /// The client ends its session gracefully.
    Goodbye {
        slot: u8,
    },
    /// The client finishes its stream (a QUIC FIN): `Registry::handle_finish`.
    Finish {
        slot: u8,
    },
    /// Lost and re-established: a browser resumes, a publisher re-publishes.
    Reconnect {
        slot: u8,
        new_port: bool,
    },
    Tokens {
        ns: u8,
        token: u8,
    },
    /// Shuts the registry down, when `confirm` is 0xff (so that it stays rare).
    Shutdown {
        confirm: u8,
    },
}

enum Client {
    /// A real publisher, with what it needs to come back after a reconnect.
    Publisher {
        publisher: Publisher,
        config: PublisherConfig,
        blob: Option<Bytes>,
    },
    Browser {
        browser: Browser,
        last_synced: Option<u64>,
    },
    Raw,
}

/// What the driver learnt from `Event::Accepted`.
#[derive(Debug, Clone)]
struct Session {
    role: Role,
    ns: Arc<str>,
    /// A publisher's entry key; a browser's peer address.
    address: SocketAddr,
}

/// Validator of the registry → client stream.
struct Down {
    decoder: FrameDecoder,
    welcome: bool,
    reject: bool,
    last_change: u64,
}

struct Conn {
    handle: ConnectionHandle,
    peer: SocketAddr,
    client: Client,
    /// Client → registry bytes not yet delivered.
    upstream: Vec<u8>,
    /// The same stream as the registry decodes it, while the session is open.
    shadow: FrameDecoder,
    /// Registry → client bytes not yet delivered.
    downstream: Vec<u8>,
    down: Down,
    accepted_at: Instant,
    /// Hello or last heartbeat: the entry TTL runs from here.
    activity: Instant,
    session: Option<Session>,
    closed: Option<(ErrorCode, String)>,
    /// The last heartbeat this session delivered.
    last_heartbeat: Option<Vec<u8>>,
    base_memory: usize,
    /// Bytes were injected into a real client's stream: the client may
    /// legitimately be confused by the registry's answers.
    tainted: bool,
}

impl Conn {
    fn live(&self) -> bool {
        self.closed.is_none()
    }

    /// Open and still before its Hello, as the registry counts it.
    fn slot_pending(&self) -> bool {
        self.live() && self.session.is_none()
    }
}

struct World {
    registry: Registry,
    config: RegistryConfig,
    now: Instant,
    slots: Vec<Option<Conn>>,
    by_handle: HashMap<ConnectionHandle, usize>,
    revision: u64,
    ns_revisions: HashMap<Arc<str>, u64>,
    shut_down: bool,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl World {
    /// The open connection `sel` selects.
    fn pick(&self, sel: u8) -> Option<usize> {
        let open: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_some()).collect();
        open.get(usize::from(sel) % open.len().max(1)).copied()
    }

    /// The slot a new connection selected by `sel` goes to.
    fn slot_for_new(&self, sel: u8) -> usize {
        match self.slots.iter().position(Option::is_none) {
            Some(free) if sel & 0x80 == 0 => free,
            _ => usize::from(sel) % SLOTS,
        }
    }

    fn conn(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot)?.as_mut()
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.registry.poll_event() {
            match event {
                Event::Accepted { connection, role, namespace, address, resumed } => {
                    let slot = *self.by_handle.get(&connection).expect("Accepted for an unknown connection");
                    let now = self.now;
                    let conn = self.slots[slot].as_mut().expect("slot of a known handle");
                    assert!(conn.session.is_none(), "second Accepted for {connection}");
                    assert!(conn.live(), "Accepted after Closed for {connection}");
                    match role {
                        Role::Publisher => {
                            assert_eq!(address.ip(), conn.peer.ip(), "a publisher's key has another IP");
                            assert!(!resumed);
                        }
                        Role::Browser => assert_eq!(address, conn.peer),
                    }
                    trace(|| format!("accepted {role} resumed={resumed}"));
                    conn.session = Some(Session { role, ns: namespace, address });
                    conn.activity = now;
                }
                Event::Closed { connection, code, reason } => {
                    let slot = *self.by_handle.get(&connection).expect("Closed for an unknown connection");
                    let conn = self.slots[slot].as_mut().expect("slot of a known handle");
                    assert!(conn.live(), "second Closed for {connection}");
                    trace(|| format!("closed {code}"));
                    conn.closed = Some((code, reason));
                }
            }
        }
    }

    fn accept(&mut self, slot: usize, peer: SocketAddr, client: Client) {
        self.remove(slot);
        let handshakes = self.registry.stats().handshakes;
        match self.registry.accept(self.now, peer) {
            Ok(handle) => {
                assert!(!self.shut_down, "accepted after shutdown");
                assert!(!self.by_handle.contains_key(&handle), "handle {handle} reused");
                let base_memory = self.registry.session_memory(handle).expect("memory of a new session");
                self.by_handle.insert(handle, slot);
                self.slots[slot] = Some(Conn {
                    handle,
                    peer: canonical(peer),
                    client,
                    upstream: Vec::new(),
                    shadow: FrameDecoder::new(self.config.max_frame_size()),
                    downstream: Vec::new(),
                    down: Down { decoder: FrameDecoder::new(1 << 20), welcome: false, reject: false, last_change: 0 },
                    accepted_at: self.now,
                    activity: self.now,
                    session: None,
                    closed: None,
                    last_heartbeat: None,
                    base_memory,
                    tainted: false,
                });
            }
            Err(Error::ShuttingDown) => assert!(self.shut_down),
            Err(Error::ServerFull { .. }) => {
                trace(|| "accept refused: server full".into());
                assert!(handshakes >= self.config.max_handshakes)
            }
            Err(Error::HandshakeLimit { from, prefix_len, max }) => {
                trace(|| format!("accept refused: pending handshakes from {from}/{prefix_len:?}"));
                let covered = |ip: IpAddr| match (prefix_len, ip, from) {
                    (None, ip, from) => ip == from,
                    (Some(_), IpAddr::V4(ip), IpAddr::V4(net)) => u32::from(ip) >> 8 == u32::from(net) >> 8,
                    (Some(_), IpAddr::V6(ip), IpAddr::V6(net)) => u128::from(ip) >> 80 == u128::from(net) >> 80,
                    _ => false,
                };
                let pending = self
                    .slots
                    .iter()
                    .flatten()
                    .filter(|c| c.slot_pending() && covered(c.peer.ip()))
                    .count();
                assert!(covered(canonical(peer).ip()), "refused {peer} for another source {from}");
                assert!(pending >= max, "refused with {pending} pending from {from} (limit {max})");
            }
            Err(e) => panic!("accept failed with {e}"),
        }
        self.drain_events();
    }

    /// The driver forgets the connection: `Registry::remove`.
    fn remove(&mut self, slot: usize) {
        self.forget(slot);
    }

    fn forget(&mut self, slot: usize) -> Option<Conn> {
        let conn = self.slots[slot].take()?;
        self.by_handle.remove(&conn.handle);
        self.registry.remove(conn.handle);
        self.drain_events();
        // A removed handle is ignored from now on.
        assert_eq!(self.registry.handle_input(conn.handle, self.now, &[0x05, 0x00]), Ok(()));
        assert!(!self.registry.poll_transmit(conn.handle, self.now, &mut Vec::new()));
        assert_eq!(self.registry.session_memory(conn.handle), None);
        assert_eq!(self.registry.poll_connection_timeout(conn.handle), None);
        assert!(self.registry.poll_event().is_none(), "events for a removed connection");
        Some(conn)
    }

    /// Delivers client bytes to the registry.
    fn feed(&mut self, slot: usize, bytes: &[u8]) {
        let Some(conn) = self.slots[slot].as_ref() else { return };
        let (handle, was_live) = (conn.handle, conn.live());
        let result = self.registry.handle_input(handle, self.now, bytes);
        self.drain_events();
        let now = self.now;
        let Some(conn) = self.slots[slot].as_mut() else { return };
        if !was_live {
            assert_eq!(result, Ok(()), "input for a closing connection reported an error");
            return;
        }
        if let Err(e) = &result {
            assert_eq!(conn.closed, Some((e.code(), e.to_string())), "error {e} without its Closed event");
            return;
        }
        if !conn.live() {
            return; // closed by a frame of this input (Goodbye, or a takeover of itself)
        }
        // Still open: the registry processed every frame of `bytes`.
        let (session, last) = (&conn.session, &mut conn.last_heartbeat);
        let mut activity = None;
        let outcome = conn.shadow.decode(bytes, |frame| {
            if let Frame::Heartbeat { blob } = frame {
                let is_publisher = session.as_ref().is_some_and(|s| s.role == Role::Publisher);
                assert!(is_publisher, "a heartbeat accepted from a session that is not a publisher");
                *last = Some(blob.to_vec());
                activity = Some(now);
            }
            Ok::<_, metaserve_proto::DecodeError>(())
        });
        assert!(outcome.is_ok(), "registry accepted a stream that does not decode: {outcome:?}");
        if let Some(at) = activity {
            conn.activity = at;
        }
    }

    /// Pulls the client's output and delivers it, with anything injected, in chunks.
    fn send(&mut self, slot: usize, cuts: &[u8]) -> bool {
        let now = self.now;
        let Some(conn) = self.slots[slot].as_mut() else { return false };
        for _ in 0..8 {
            let wrote = match &mut conn.client {
                Client::Publisher { publisher, .. } => publisher.poll_transmit(now, &mut conn.upstream),
                Client::Browser { browser, .. } => browser.poll_transmit(now, &mut conn.upstream),
                Client::Raw => false,
            };
            if !wrote {
                break;
            }
        }
        let upstream = std::mem::take(&mut conn.upstream);
        for part in chunks(&upstream, cuts) {
            self.feed(slot, part);
        }
        !upstream.is_empty()
    }

    /// Pulls the registry's output, checks it, and delivers it to the client in chunks.
    fn receive(&mut self, slot: usize, cuts: &[u8]) -> bool {
        let Some(conn) = self.slots[slot].as_mut() else { return false };
        let mut produced = false;
        for _ in 0..64 {
            let mut buf = Vec::new();
            let wrote = self.registry.poll_transmit(conn.handle, self.now, &mut buf);
            assert_eq!(wrote, !buf.is_empty());
            if !wrote {
                // The final-frame contract: an ended session names its
                // close once its final frames are taken, an open one never.
                let close = self.registry.poll_close(conn.handle).map(|(c, r)| (c, r.to_owned()));
                assert_eq!(close, conn.closed, "poll_close of a drained connection");
                break;
            }
            produced = true;
            let revision = self.registry.stats().revision;
            let (epoch, config) = (self.registry.epoch(), &self.config);
            let (down, session, closed) = (&mut conn.down, &conn.session, &conn.closed);
            let Down { decoder, welcome, reject, last_change } = down;
            decode_valid(decoder, &buf, "registry output", |frame| {
                assert!(!*reject, "frame after Reject: {frame:?}");
                let role = session.as_ref().map(|s| s.role);
                let is_browser = role == Some(Role::Browser) && *welcome;
                match frame {
                    Frame::Welcome(w) => {
                        assert!(!*welcome, "second Welcome");
                        *welcome = true;
                        let s = session.as_ref().expect("Welcome without Accepted");
                        assert_eq!(w.version, 1);
                        assert_eq!(w.epoch, epoch);
                        assert_eq!(w.max_blob_size, config.max_blob_size as u64);
                        assert_eq!(w.heartbeat_interval, config.heartbeat_interval);
                        assert_eq!(w.update_interval, config.update_interval);
                        assert_eq!(w.entry_ttl, config.entry_ttl);
                        match s.role {
                            Role::Publisher => {
                                assert_eq!(w.publisher.map(|p| p.address), Some(s.address))
                            }
                            Role::Browser => assert_eq!(w.publisher, None),
                        }
                    }
                    Frame::Reject(r) => {
                        *reject = true;
                        let (code, reason) = closed.as_ref().expect("Reject without Closed");
                        assert_eq!((r.code, r.reason), (*code, reason.as_str()));
                    }
                    Frame::Upsert(u) => {
                        assert!(is_browser, "Upsert to a non-browser");
                        assert!(u.revision > *last_change && u.revision <= revision, "Upsert revision {}", u.revision);
                        assert!(u.blob.len() <= config.max_blob_size);
                        *last_change = u.revision;
                    }
                    Frame::Remove { revision: r, .. } => {
                        trace(|| "remove sent".into());
                        assert!(is_browser, "Remove to a non-browser");
                        assert!(r > *last_change && r <= revision, "Remove revision {r}");
                        *last_change = r;
                    }
                    Frame::Synced { revision: r } => {
                        assert!(is_browser, "Synced to a non-browser");
                        assert!(r >= *last_change && r <= revision, "Synced revision {r} after {last_change}");
                        *last_change = r;
                    }
                    Frame::Reset => {
                        trace(|| "reset sent".into());
                        assert!(is_browser, "Reset to a non-browser");
                        *last_change = 0;
                    }
                    other => panic!("registry sent {other:?}"),
                }
            });
            conn.downstream.extend_from_slice(&buf);
        }
        let downstream = std::mem::take(&mut conn.downstream);
        let mut client_failed = false;
        for part in chunks(&downstream, cuts) {
            match &mut conn.client {
                Client::Publisher { .. } | Client::Browser { .. } if conn.tainted => {}
                Client::Publisher { publisher, .. } => {
                    let result = publisher.handle_input(self.now, part);
                    assert_eq!(result, Ok(()), "a real publisher refused the registry's output");
                    while let Some(event) = publisher.poll_event() {
                        match event {
                            PublisherEvent::Accepted(w) => {
                                let key = conn.session.as_ref().map(|s| s.address);
                                assert_eq!(w.publisher.map(|p| p.address), key);
                            }
                            PublisherEvent::Rejected { code, reason } => {
                                assert_eq!(conn.closed, Some((code, reason)));
                            }
                        }
                    }
                }
                Client::Browser { browser, last_synced } => {
                    let result = browser.handle_input(self.now, part);
                    while let Some(event) = browser.poll_event() {
                        match event {
                            BrowserEvent::Synced { revision, .. } => *last_synced = Some(revision),
                            BrowserEvent::Rejected { code, reason } => {
                                assert_eq!(conn.closed, Some((code, reason)));
                            }
                            BrowserEvent::Upsert(_) | BrowserEvent::Remove(_) | BrowserEvent::Reset => {}
                        }
                    }
                    if let Err(e) = result {
                        trace(|| format!("browser refused: {}", e.code()));
                        // Only the browser's own limit may make it refuse the registry's output.
                        assert_eq!(e.code(), ErrorCode::LIST_TOO_LARGE, "a real browser refused: {e}");
                        client_failed = true;
                        break;
                    }
                }
                Client::Raw => {}
            }
        }
        if client_failed {
            // The browser's driver closes the connection.
            self.remove(slot);
        }
        produced
    }

    /// The client's stream ends: a graceful close between frames, a protocol
    /// violation inside one (the shadow decoder knows which).
    fn finish(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].as_ref() else { return };
        let (handle, was_live, buffered) = (conn.handle, conn.live(), conn.shadow.buffered());
        let result = self.registry.handle_finish(handle);
        self.drain_events();
        let Some(conn) = self.slots[slot].as_ref() else { return };
        if !was_live {
            assert_eq!(result, Ok(()), "a FIN on a closing connection reported an error");
            return;
        }
        match result {
            Ok(()) => {
                assert_eq!(buffered, 0, "a FIN inside a frame was taken as graceful");
                assert_eq!(conn.closed.as_ref().map(|c| c.0), Some(ErrorCode::NO_ERROR));
            }
            Err(e) => {
                assert!(buffered > 0, "a FIN between frames refused: {e}");
                assert_eq!(e.code(), ErrorCode::PROTOCOL_VIOLATION);
                assert_eq!(conn.closed, Some((e.code(), e.to_string())), "error {e} without its Closed event");
            }
        }
    }

    fn set_heartbeat(&mut self, slot: usize, new: Bytes) {
        let now = self.now;
        if let Some(Conn { client: Client::Publisher { publisher, blob, .. }, .. }) = self.conn(slot) {
            if publisher.set_heartbeat(new.clone(), now).is_ok() {
                *blob = Some(new);
            }
        }
    }

    fn sync(&mut self, slot: usize) {
        let Some(conn) = self.conn(slot) else { return };
        if !matches!(conn.client, Client::Browser { .. }) {
            return;
        }
        let handle = conn.handle;
        if let Some(at) = self.registry.poll_connection_timeout(handle) {
            self.now = self.now.max(at);
        }
        let mut rounds = 0;
        loop {
            let sent = self.send(slot, &[]);
            let received = self.receive(slot, &[]);
            if !sent && !received {
                break;
            }
            rounds += 1;
            assert!(rounds < 10_000, "a browser's session does not quiesce");
        }
        let Some(conn) = self.slots[slot].as_ref() else { return };
        let Client::Browser { browser, last_synced } = &conn.client else { return };
        let Some(session) = conn.session.clone().filter(|_| conn.closed.is_none()) else { return };
        if browser.is_closed() || conn.tainted {
            return;
        }
        assert!(browser.is_synced(), "a quiescent browser is not synced");
        let info = self.registry.namespaces().find(|n| n.name == session.ns).expect("the browser's namespace exists");
        assert_eq!(*last_synced, Some(info.revision), "a quiescent browser is not Synced at its namespace's head");
        let mine: HashMap<SocketAddr, Server> = browser.servers().map(|s| (s.address, s.clone())).collect();
        let theirs: HashMap<SocketAddr, Server> = self.registry.servers(&session.ns).map(|s| (s.address, s)).collect();
        assert_eq!(mine, theirs, "a synced browser's list differs from the registry's");
        trace(|| format!("synced browser equals registry: {} entries", mine.len().min(3)));
    }

    fn check(&mut self) {
        if let Err(e) = self.registry.check_invariants() {
            panic!("registry invariant violated: {e}");
        }
        let stats = self.registry.stats();
        let config = &self.config;
        assert!(stats.revision >= self.revision, "revision went back from {} to {}", self.revision, stats.revision);
        self.revision = stats.revision;

        // Limits.
        assert!(stats.publishers <= config.max_publishers, "{} publishers", stats.publishers);
        assert!(stats.browsers <= config.max_browsers, "{} browsers", stats.browsers);
        assert!(stats.handshakes <= config.max_handshakes, "{} handshakes", stats.handshakes);
        let published = self.registry.namespaces().filter(|ns| ns.publishers > 0).count();
        assert!(published <= config.max_namespaces, "{published} namespaces with publishers");
        assert!(stats.namespaces <= published + stats.browsers, "{} namespaces", stats.namespaces);
        assert!(stats.tombstones <= stats.namespaces * config.max_tombstones, "{} tombstones", stats.tombstones);
        assert!(stats.ghosts <= stats.browsers, "{} ghosts for {} browsers", stats.ghosts, stats.browsers);
        assert!(stats.entries <= stats.publishers, "{} entries for {} publishers", stats.entries, stats.publishers);
        assert_eq!(self.registry.log_nodes(), stats.entries + stats.tombstones + stats.ghosts);
        if stats.ghosts > 0 {
            trace(|| "ghosts held".into());
        }
        if stats.namespaces > 0 && stats.tombstones == stats.namespaces * config.max_tombstones && stats.tombstones > 0
        {
            trace(|| "tombstones at the limit".into());
        }

        // The sessions the driver knows of, from events.
        let mut counts = (0, 0, 0);
        let mut per_ip: HashMap<IpAddr, (usize, usize)> = HashMap::new();
        let mut per_ns: HashMap<Arc<str>, (usize, usize)> = HashMap::new();
        let mut keys: HashMap<(Arc<str>, SocketAddr), Option<&[u8]>> = HashMap::new();
        let memory_bound = 2 * (config.max_frame_size() + MAX_HEADER_LEN) + 512;
        for conn in self.slots.iter().flatten() {
            let memory = self.registry.session_memory(conn.handle).expect("memory of a known session");
            assert!(
                memory <= conn.base_memory + memory_bound,
                "session holds {memory} bytes, base {} + bound {memory_bound}",
                conn.base_memory
            );
            if !conn.live() {
                continue;
            }
            let Some(s) = &conn.session else {
                counts.2 += 1;
                continue;
            };
            let ip = per_ip.entry(conn.peer.ip()).or_default();
            let ns = per_ns.entry(s.ns.clone()).or_default();
            match s.role {
                Role::Publisher => {
                    counts.0 += 1;
                    ip.0 += 1;
                    ns.0 += 1;
                    let previous = keys.insert((s.ns.clone(), s.address), conn.last_heartbeat.as_deref());
                    assert!(previous.is_none(), "two live publishers for {} in {}", s.address, s.ns);
                }
                Role::Browser => {
                    counts.1 += 1;
                    ip.1 += 1;
                    ns.1 += 1;
                }
            }
        }
        assert_eq!(counts, (stats.publishers, stats.browsers, stats.handshakes), "stats differ from events");
        for (ip, (p, b)) in &per_ip {
            assert!(*p <= config.max_publishers_per_ip, "{p} publishers from {ip}");
            assert!(*b <= config.max_browsers_per_ip, "{b} browsers from {ip}");
        }

        // Namespaces and their entries.
        let mut names = HashSet::new();
        for info in self.registry.namespaces() {
            assert_eq!(per_ns.get(&info.name).copied(), Some((info.publishers, info.browsers)), "{}", info.name);
            assert!(info.revision <= stats.revision);
            assert!(info.tombstones <= config.max_tombstones, "{} tombstones in {}", info.tombstones, info.name);
            let previous = self.ns_revisions.insert(info.name.clone(), info.revision).unwrap_or(0);
            assert!(info.revision >= previous, "namespace {} went back to {}", info.name, info.revision);
            let mut entries = 0;
            for server in self.registry.servers(&info.name) {
                entries += 1;
                assert!(server.revision <= info.revision);
                let Some(last) = keys.get(&(info.name.clone(), server.address)) else {
                    panic!("entry {} in {} has no live publisher", server.address, info.name);
                };
                if let Some(last) = last {
                    assert_eq!(&server.blob[..], *last, "entry {} is not its last heartbeat", server.address);
                }
            }
            assert_eq!(entries, info.entries);
            names.insert(info.name);
        }
        assert_eq!(names.len(), stats.namespaces);
        assert_eq!(per_ns.len(), names.len(), "namespaces differ from the sessions in them");
        for ((ns, key), last) in &keys {
            if last.is_some() {
                assert!(self.registry.servers(ns).any(|s| s.address == *key), "{key} published but not listed");
            }
        }
    }

    /// After `handle_timeout(now)`, nothing is left overdue.
    fn check_timeouts(&self) {
        if let Some(at) = self.registry.poll_timeout() {
            assert!(at > self.now, "poll_timeout {at:?} already due after handle_timeout");
        }
        for conn in self.slots.iter().flatten().filter(|c| c.live()) {
            match &conn.session {
                None => {
                    assert!(conn.accepted_at + self.config.handshake_timeout > self.now, "handshake timeout missed")
                }
                Some(s) if s.role == Role::Publisher => {
                    assert!(conn.activity + self.config.entry_ttl > self.now, "entry TTL missed")
                }
                Some(_) => {}
            }
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let config = input.knobs.config();
    let now = Instant::now();
    let mut w = World {
        registry: Registry::new(config.clone(), 0x5eed),
        config,
        now,
        slots: (0..SLOTS).map(|_| None).collect(),
        by_handle: HashMap::new(),
        revision: 0,
        ns_revisions: HashMap::new(),
        shut_down: false,
    };
    for op in input.ops {
        match op {
            Op::Publisher { slot, peer, ns, declared_port, token, blob } => {
                let token = TOKENS[usize::from(token) % TOKENS.len()];
                let config = PublisherConfig {
                    namespace: NAMESPACES[usize::from(ns) % NAMESPACES.len()].to_owned(),
                    token: (!token.is_empty()).then(|| Bytes::from_static(token)),
                    declared_port: match declared_port % 5 {
                        0 | 1 => None,
                        2 => Some(0),
                        n => Some(PORTS[usize::from(n) % PORTS.len()]),
                    },
                    ..PublisherConfig::new("")
                };
                let mut publisher = Publisher::new(config.clone(), w.now);
                let blob = Bytes::from(blob);
                let _ = publisher.set_heartbeat(blob.clone(), w.now);
                let slot = w.slot_for_new(slot);
                w.accept(slot, peer.addr(), Client::Publisher { publisher, config, blob: Some(blob) });
            }
            Op::Browser { slot, peer, ns, max_entries } => {
                let mut config = BrowserConfig::new(NAMESPACES[usize::from(ns) % NAMESPACES.len()]);
                if max_entries % 4 == 0 {
                    config.max_entries = usize::from(max_entries % 16);
                }
                let browser = Browser::new(config);
                let slot = w.slot_for_new(slot);
                w.accept(slot, peer.addr(), Client::Browser { browser, last_synced: None });
            }
            Op::RawClient { slot, peer } => {
                let slot = w.slot_for_new(slot);
                w.accept(slot, peer.addr(), Client::Raw);
            }
            Op::SetHeartbeat { slot, blob } => {
                if let Some(slot) = w.pick(slot) {
                    w.set_heartbeat(slot, Bytes::from(blob));
                }
            }
            Op::SetSmall { slot, b } => {
                if let Some(slot) = w.pick(slot) {
                    w.set_heartbeat(slot, Bytes::from(vec![b % 4]));
                }
            }
            Op::Send { slot, cuts } => {
                if let Some(slot) = w.pick(slot) {
                    w.send(slot, cuts);
                }
            }
            Op::Receive { slot, cuts } => {
                if let Some(slot) = w.pick(slot) {
                    w.receive(slot, cuts);
                }
            }
            Op::Raw { slot, bytes } => {
                if let Some(conn) = w.pick(slot).and_then(|slot| w.conn(slot)) {
                    conn.upstream.extend_from_slice(bytes);
                    conn.tainted |= !bytes.is_empty();
                }
            }
            Op::Frame { slot, frame } => {
                if let Some(conn) = w.pick(slot).and_then(|slot| w.conn(slot)) {
                    frame.encode(&mut conn.upstream);
                    conn.tainted = true;
                }
            }
            Op::Sync { slot } => {
                if let Some(slot) = w.pick(slot) {
                    w.sync(slot);
                }
            }
            Op::Pump { slot } => {
                if let Some(slot) = w.pick(slot) {
                    w.send(slot, &[]);
                    w.receive(slot, &[]);
                }
            }
            Op::PumpAll => {
                for slot in 0..SLOTS {
                    w.send(slot, &[]);
                    w.receive(slot, &[]);
                }
            }
            Op::Advance { tens_of_ms } => w.now += Duration::from_millis(10 * u64::from(tens_of_ms)),
            Op::AdvanceLong { ms } => w.now += Duration::from_millis(u64::from(ms)),
            Op::Timeout => {
                w.registry.handle_timeout(w.now);
                w.drain_events();
                w.check_timeouts();
            }
            Op::Close { slot } => {
                if let Some(slot) = w.pick(slot) {
                    w.remove(slot);
                }
            }
            Op::Goodbye { slot } => {
                let now = w.now;
                if let Some(conn) = w.pick(slot).and_then(|slot| w.conn(slot)) {
                    match &mut conn.client {
                        Client::Publisher { publisher, .. } => publisher.shutdown(now),
                        Client::Browser { browser, .. } => browser.shutdown(now),
                        Client::Raw => Frame::Goodbye.encode(&mut conn.upstream),
                    }
                }
            }
            Op::Finish { slot } => {
                if let Some(slot) = w.pick(slot) {
                    w.finish(slot);
                }
            }
            Op::Reconnect { slot, new_port } => {
                let Some(slot) = w.pick(slot) else { continue };
                let Some(conn) = w.forget(slot) else { continue };
                let port = if new_port { conn.peer.port().wrapping_add(1000) } else { conn.peer.port() };
                let peer = SocketAddr::new(conn.peer.ip(), port);
                let client = match conn.client {
                    Client::Browser { browser, .. } => {
                        Client::Browser { browser: browser.reconnect(), last_synced: None }
                    }
                    Client::Publisher { config, blob, .. } => {
                        let mut publisher = Publisher::new(config.clone(), w.now);
                        if let Some(blob) = &blob {
                            let _ = publisher.set_heartbeat(blob.clone(), w.now);
                        }
                        Client::Publisher { publisher, config, blob }
                    }
                    Client::Raw => Client::Raw,
                };
                w.accept(slot, peer, client);
            }
            Op::Tokens { ns, token } => {
                let ns = NAMESPACES[usize::from(ns) % NAMESPACES.len()];
                let token = TOKENS[usize::from(token) % TOKENS.len()];
                w.registry.set_publish_tokens(ns, if token.is_empty() { vec![] } else { vec![token] });
            }
            Op::Shutdown { confirm } => {
                if confirm != 0xff {
                    continue;
                }
                w.registry.shutdown();
                w.shut_down = true;
                w.drain_events();
                assert!(w.slots.iter().flatten().all(|c| !c.live()), "a session survived shutdown");
            }
        }
        w.check();
    }
    // Finally, every connection flushes, and every browser still open catches
    // up and agrees with the registry.
    for slot in 0..SLOTS {
        w.send(slot, &[]);
        w.receive(slot, &[]);
    }
    for slot in 0..SLOTS {
        w.sync(slot);
        w.check();
    }
});
