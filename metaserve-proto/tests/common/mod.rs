//! Test harness for `tests/behaviour.rs`: a [`World`] that owns a
//! [`Registry`] and simulated time, and wires [`Publisher`] / [`Browser`]
//! state machines to it through real encoded bytes.
//!
//! Nothing here calls into the crate's internals: every byte a client sends
//! comes out of its `poll_transmit` (or is hand-encoded with
//! `frame::Frame::encode`), goes through `Registry::handle_input`, and every
//! byte the registry sends comes out of `Registry::poll_transmit` and goes
//! through the client's `handle_input`.

// A helper module of a test crate: `pub` means "for the tests", not an API.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaserve_proto::frame::Frame;
use metaserve_proto::{
    Browser, BrowserConfig, BrowserEvent, ClientRole, ConnectionHandle, DecodeError, Error, ErrorCode, Event,
    FrameDecoder, Publisher, PublisherConfig, PublisherEvent, Registry, RegistryConfig, Server, Welcome,
};

/// The namespace most tests use.
pub const NS: &str = "game";

/// Parses a socket address literal.
pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// A frame as it travelled on the wire, owned, for counting and matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    Hello,
    Welcome(Welcome),
    Reject(ErrorCode, String),
    Heartbeat(Vec<u8>),
    Goodbye,
    Upsert { revision: u64, address: SocketAddr, port_declared: bool, blob: Vec<u8> },
    Remove { revision: u64, address: SocketAddr },
    Synced(u64),
    Reset,
    Unknown(u64),
}

/// Decodes a whole byte stream into frames; panics if it does not decode.
pub fn decode_all(bytes: &[u8]) -> Vec<Wire> {
    let mut out = Vec::new();
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder
        .decode(bytes, |frame| {
            out.push(match frame {
                Frame::Hello(_) => Wire::Hello,
                Frame::Welcome(w) => Wire::Welcome(w),
                Frame::Reject(r) => Wire::Reject(r.code, r.reason.to_owned()),
                Frame::Heartbeat { blob } => Wire::Heartbeat(blob.to_vec()),
                Frame::Goodbye => Wire::Goodbye,
                Frame::Upsert(u) => Wire::Upsert {
                    revision: u.revision,
                    address: u.address,
                    port_declared: u.port_declared,
                    blob: u.blob.to_vec(),
                },
                Frame::Remove { revision, address } => Wire::Remove { revision, address },
                Frame::Synced { revision } => Wire::Synced(revision),
                Frame::Reset => Wire::Reset,
                Frame::Unknown { frame_type, .. } => Wire::Unknown(frame_type),
            });
            Ok::<_, DecodeError>(())
        })
        .expect("registry output decodes");
    assert_eq!(decoder.buffered(), 0, "registry output ends inside a frame");
    out
}

/// Encodes one frame.
pub fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    buf
}

/// Either client role, as a trait object (the roles' [`ClientRole`] has
/// an event type of each role's own), so that rejection checks work for both.
pub trait Client {
    /// `poll_transmit` of the role.
    fn transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool;
    /// `handle_input` of the role.
    fn input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error>;
    /// Drains the role's events and returns the Reject it received, if any.
    fn rejection(&mut self) -> Option<(ErrorCode, String)>;
    /// Whether a Welcome arrived.
    fn welcomed(&self) -> bool;
}

impl<R: ClientRole> Client for R {
    fn transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        self.poll_transmit(now, buf)
    }
    fn input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        self.handle_input(now, bytes)
    }
    fn rejection(&mut self) -> Option<(ErrorCode, String)> {
        while self.poll_event().is_some() {}
        ClientRole::rejection(self).map(|(code, reason)| (code, reason.to_owned()))
    }
    fn welcomed(&self) -> bool {
        self.welcome().is_some()
    }
}

/// A publisher state machine and its connection.
pub struct Pub {
    pub publisher: Publisher,
    pub conn: ConnectionHandle,
    pub peer: SocketAddr,
}

impl Pub {
    /// The address browsers see for this publisher, from its Welcome.
    pub fn address(&self) -> SocketAddr {
        self.publisher.welcome().and_then(|w| w.publisher).expect("publisher welcomed").address
    }
}

/// A browser state machine and its connection.
pub struct Brw {
    pub browser: Browser,
    pub conn: ConnectionHandle,
    pub peer: SocketAddr,
}

/// What one browser read delivered.
#[derive(Debug, Default)]
pub struct Read {
    /// Frames the registry sent, in order.
    pub frames: Vec<Wire>,
    /// Events the browser emitted, in order.
    pub events: Vec<BrowserEvent>,
    /// Bytes the registry sent.
    pub bytes: usize,
}

impl Read {
    pub fn upserts_for(&self, address: SocketAddr) -> Vec<&[u8]> {
        self.frames
            .iter()
            .filter_map(|f| match f {
                Wire::Upsert { address: a, blob, .. } if *a == address => Some(&blob[..]),
                _ => None,
            })
            .collect()
    }
    pub fn upsert_count(&self) -> usize {
        self.frames.iter().filter(|f| matches!(f, Wire::Upsert { .. })).count()
    }
    pub fn remove_count(&self) -> usize {
        self.frames.iter().filter(|f| matches!(f, Wire::Remove { .. })).count()
    }
    pub fn resets(&self) -> usize {
        self.frames.iter().filter(|f| matches!(f, Wire::Reset)).count()
    }
    /// Addresses of Upsert events, in order.
    pub fn upserted(&self) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                BrowserEvent::Upsert(s) => Some(s.address),
                _ => None,
            })
            .collect()
    }
    /// Addresses of Remove events, in order.
    pub fn removed(&self) -> Vec<SocketAddr> {
        self.events
            .iter()
            .filter_map(|e| match e {
                BrowserEvent::Remove(a) => Some(*a),
                _ => None,
            })
            .collect()
    }
}

/// A registry, simulated time, and every event the registry reported.
pub struct World {
    pub registry: Registry,
    pub base: Instant,
    pub now: Instant,
    /// Every registry event so far, in order.
    pub events: Vec<Event>,
}

impl World {
    pub fn new(config: RegistryConfig) -> Self {
        World::with_epoch(config, 0x5eed)
    }

    pub fn with_epoch(config: RegistryConfig, epoch: u64) -> Self {
        let base = Instant::now();
        World { registry: Registry::new(config, epoch), base, now: base, events: Vec::new() }
    }

    /// Moves simulated time forward and lets the registry's timers fire.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.registry.handle_timeout(self.now);
        self.collect_events();
    }

    pub fn collect_events(&mut self) {
        while let Some(event) = self.registry.poll_event() {
            self.events.push(event);
        }
    }

    /// The registry's consistency check, as a test assertion.
    pub fn check(&self) {
        if let Err(e) = self.registry.check_invariants() {
            panic!("registry invariants broken: {e}");
        }
    }

    pub fn accept(&mut self, peer: SocketAddr) -> ConnectionHandle {
        self.registry.accept(self.now, peer).expect("accept")
    }

    /// `Event::Closed` reports for `conn`: (code, reason).
    pub fn closed(&self, conn: ConnectionHandle) -> Vec<(ErrorCode, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Closed { connection, code, reason } if *connection == conn => Some((*code, reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `resumed` flag of the `Event::Accepted` for `conn`.
    pub fn accepted_resumed(&self, conn: ConnectionHandle) -> Option<bool> {
        self.events.iter().find_map(|e| match e {
            Event::Accepted { connection, resumed, .. } if *connection == conn => Some(*resumed),
            _ => None,
        })
    }

    /// Client → registry: everything the client has to send now.
    /// Returns the registry's verdict on those bytes.
    pub fn upload(&mut self, conn: ConnectionHandle, client: &mut dyn Client) -> Result<usize, Error> {
        let mut buf = Vec::new();
        while client.transmit(self.now, &mut buf) {}
        let result = if buf.is_empty() { Ok(()) } else { self.registry.handle_input(conn, self.now, &buf) };
        self.collect_events();
        result.map(|()| buf.len())
    }

    /// Registry → client: everything the registry has for `conn` now, fed to
    /// the client (which must accept it). Returns the raw bytes.
    pub fn download(&mut self, conn: ConnectionHandle, client: &mut dyn Client) -> Vec<u8> {
        let mut buf = Vec::new();
        while self.registry.poll_transmit(conn, self.now, &mut buf) {}
        if let Err(e) = client.input(self.now, &buf) {
            panic!("client refused registry output: {e}");
        }
        buf
    }

    /// Raw bytes from a client straight into the registry.
    pub fn send_raw(&mut self, conn: ConnectionHandle, bytes: &[u8]) -> Result<(), Error> {
        let result = self.registry.handle_input(conn, self.now, bytes);
        self.collect_events();
        result
    }

    /// Connects a publisher with `config` from `peer`, publishing `blob`,
    /// and completes the handshake.
    pub fn publisher_with(&mut self, peer: &str, config: PublisherConfig, blob: &str) -> Pub {
        let peer = addr(peer);
        let mut publisher = Publisher::new(config, self.now);
        publisher.set_heartbeat(Bytes::copy_from_slice(blob.as_bytes()), self.now).expect("blob fits");
        let conn = self.accept(peer);
        self.upload(conn, &mut publisher).expect("publisher Hello accepted");
        self.download(conn, &mut publisher);
        match publisher.poll_event() {
            Some(PublisherEvent::Accepted(_)) => {}
            other => panic!("publisher from {peer} not accepted: {other:?}"),
        }
        Pub { publisher, conn, peer }
    }

    /// A publisher in [`NS`] from `peer` publishing `blob`.
    pub fn publisher(&mut self, peer: &str, blob: &str) -> Pub {
        self.publisher_with(peer, PublisherConfig::new(NS), blob)
    }

    /// Sets a new blob and lets the publisher send whatever is due now.
    pub fn heartbeat(&mut self, p: &mut Pub, blob: &str) {
        p.publisher.set_heartbeat(Bytes::copy_from_slice(blob.as_bytes()), self.now).expect("blob fits");
        self.pump(p);
    }

    /// Both directions for a publisher; the registry must accept its bytes.
    pub fn pump(&mut self, p: &mut Pub) {
        self.upload(p.conn, &mut p.publisher).expect("registry accepts publisher bytes");
        self.download(p.conn, &mut p.publisher);
    }

    /// Graceful leave: Goodbye, then the driver drops the connection.
    pub fn goodbye(&mut self, p: &mut Pub) {
        p.publisher.shutdown(self.now);
        self.upload(p.conn, &mut p.publisher).expect("Goodbye accepted");
        assert_eq!(self.closed(p.conn), [(ErrorCode::NO_ERROR, "goodbye".to_owned())]);
        self.registry.remove(p.conn);
    }

    /// Connects a browser of [`NS`] from `peer` and reads its snapshot.
    pub fn browser(&mut self, peer: &str) -> Brw {
        self.browser_with(peer, BrowserConfig::new(NS))
    }

    pub fn browser_with(&mut self, peer: &str, config: BrowserConfig) -> Brw {
        let mut b = Brw { browser: Browser::new(config), conn: self.accept(addr(peer)), peer: addr(peer) };
        self.read(&mut b);
        assert!(b.browser.is_synced(), "browser from {peer} did not complete its snapshot");
        b
    }

    /// Lets a browser read: its Hello (if still unsent) goes up, whatever the
    /// registry has for it now comes down.
    pub fn read(&mut self, b: &mut Brw) -> Read {
        self.upload(b.conn, &mut b.browser).expect("registry accepts browser bytes");
        let bytes = self.download(b.conn, &mut b.browser);
        let mut events = Vec::new();
        while let Some(event) = b.browser.poll_event() {
            events.push(event);
        }
        Read { frames: decode_all(&bytes), events, bytes: bytes.len() }
    }

    /// The registry's live list of `namespace`, by address.
    pub fn listing(&self, namespace: &str) -> HashMap<SocketAddr, Server> {
        self.registry.servers(namespace).map(|s| (s.address, s)).collect()
    }

    /// Drives the whole system up to `until` the way a real driver would:
    /// sleeping until the earliest of the registry's and the publishers'
    /// `poll_timeout`, then letting timers fire and pumping the publishers.
    /// Publishers that get closed stop being pumped.
    pub fn run_until(&mut self, until: Instant, publishers: &mut [&mut Pub]) {
        for _ in 0..100_000 {
            let next = publishers
                .iter()
                .filter(|p| !p.publisher.is_closed())
                .filter_map(|p| p.publisher.poll_timeout())
                .chain(self.registry.poll_timeout())
                .min()
                .map_or(until, |t| t.min(until))
                .max(self.now);
            self.now = next;
            self.registry.handle_timeout(self.now);
            self.collect_events();
            for p in publishers.iter_mut() {
                if !p.publisher.is_closed() {
                    self.upload(p.conn, &mut p.publisher).expect("registry accepts publisher bytes");
                    self.download(p.conn, &mut p.publisher);
                }
            }
            if self.now >= until {
                return;
            }
        }
        panic!("run_until: the timers never reached {until:?}");
    }
}

/// Shorthand for a duration in seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Shorthand for a duration in milliseconds.
pub fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
