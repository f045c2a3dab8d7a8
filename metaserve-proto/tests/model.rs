//! Model-based property tests of the three roles working together.
//!
//! Random sequences of operations drive real [`Publisher`]s, [`Browser`]s and
//! one [`Registry`], wired through real bytes, while a small reference model
//! (namespace → address → blob, plus who owns each address) predicts every
//! entry, every connection the registry closes and why, and every browser's
//! view. After each step the registry's invariants must hold and its lists
//! must equal the model's; after each read a browser's list must equal both.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaserve_proto::frame::{Frame, Hello};
use metaserve_proto::{
    Browser, BrowserConfig, BrowserEvent, ConnectionHandle, Error, ErrorCode, Event, Publisher, PublisherConfig,
    PublisherEvent, Registry, RegistryConfig, Resume, Role, Server, PROTOCOL_VERSION,
};
use proptest::prelude::*;
use proptest::sample::Index;

const NAMESPACES: [&str; 3] = ["alpha", "beta", "gamma"];
/// Peer IPs; the third is the IPv4-mapped form of the first, so the registry
/// must treat them as one address.
const IPS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "::ffff:10.0.0.1", "2001:db8::1"];
/// Observed ports of publishers.
const PORTS: [u16; 3] = [27960, 27961, 40000];
/// Declared ports; 27960 collides with an observed port on purpose.
const DECLARED: [u16; 2] = [27960, 5000];
/// Stream splits used when feeding bytes.
const SPLITS: [usize; 4] = [1, 3, 17, usize::MAX];
const MAX_BLOB: usize = 16;

#[derive(Debug, Clone)]
struct Setup {
    ttl: Duration,
    handshake: Duration,
    update: Duration,
    heartbeat: Duration,
    max_tombstones: usize,
    transmit_chunk: usize,
    max_publishers_per_ip: usize,
}

impl Setup {
    fn config(&self) -> RegistryConfig {
        RegistryConfig {
            max_blob_size: MAX_BLOB,
            heartbeat_interval: self.heartbeat,
            update_interval: self.update,
            entry_ttl: self.ttl,
            handshake_timeout: self.handshake,
            max_publishers_per_ip: self.max_publishers_per_ip,
            max_tombstones: self.max_tombstones,
            transmit_chunk: self.transmit_chunk,
            ..RegistryConfig::default()
        }
    }
}

fn ms(values: &[u64]) -> impl Strategy<Value = Duration> {
    prop::sample::select(values.to_vec()).prop_map(Duration::from_millis)
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        ms(&[2_000, 5_000]),
        ms(&[1_000, 3_000, 8_000]),
        ms(&[100, 700]),
        ms(&[0, 50]),
        prop::sample::select(vec![1usize, 3, 10_000]),
        prop::sample::select(vec![1usize, 40, 16 * 1024]),
        prop::sample::select(vec![2usize, 100]),
    )
        .prop_map(|(ttl, handshake, update, heartbeat, max_tombstones, transmit_chunk, max_publishers_per_ip)| {
            Setup { ttl, handshake, update, heartbeat, max_tombstones, transmit_chunk, max_publishers_per_ip }
        })
}

#[derive(Debug, Clone)]
enum Op {
    /// A publisher connects, optionally with a first heartbeat riding along the Hello.
    PubConnect { ns: usize, ip: usize, port: usize, declared: Option<usize>, first: Option<Vec<u8>> },
    /// After one heartbeat interval, a publisher sends a blob (None: the same as before).
    Heartbeat { p: Index, blob: Option<Vec<u8>>, split: usize },
    /// A publisher says Goodbye.
    PubGoodbye { p: Index },
    /// A publisher's connection drops without a word.
    PubDisconnect { p: Index },
    /// A publisher sends something the protocol does not allow (or an unknown frame).
    PubMisbehave { p: Index, kind: u8 },
    /// A connection that never says Hello.
    Silent { ip: usize },
    /// Time passes.
    Advance { by: Duration },
    /// A browser connects and receives its snapshot.
    BrowserConnect { ns: usize, ip: usize, split: usize },
    /// One update interval later, a browser reads everything due.
    BrowserRead { b: Index, split: usize },
    /// A browser leaves, gracefully or not.
    BrowserDisconnect { b: Index, graceful: bool },
    /// A browser (connected or not) reconnects, resuming where it left off.
    BrowserReconnect { b: Index, split: usize },
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet, so that identical blobs are common.
    prop::collection::vec(0u8..3, 0..4)
}

fn split() -> impl Strategy<Value = usize> {
    prop::sample::select(SPLITS.to_vec())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NAMESPACES.len(), 0..IPS.len(), 0..PORTS.len(), prop::option::of(0..DECLARED.len()), prop::option::of(blob()))
            .prop_map(|(ns, ip, port, declared, first)| Op::PubConnect { ns, ip, port, declared, first }),
        6 => (any::<Index>(), prop::option::weighted(0.7, blob()), split())
            .prop_map(|(p, blob, split)| Op::Heartbeat { p, blob, split }),
        1 => any::<Index>().prop_map(|p| Op::PubGoodbye { p }),
        1 => any::<Index>().prop_map(|p| Op::PubDisconnect { p }),
        1 => (any::<Index>(), 0u8..4).prop_map(|(p, kind)| Op::PubMisbehave { p, kind }),
        1 => (0..IPS.len()).prop_map(|ip| Op::Silent { ip }),
        3 => ms(&[1, 50, 500, 1_000, 2_500, 6_000]).prop_map(|by| Op::Advance { by }),
        2 => (0..NAMESPACES.len(), 0..IPS.len(), split())
            .prop_map(|(ns, ip, split)| Op::BrowserConnect { ns, ip, split }),
        4 => (any::<Index>(), split()).prop_map(|(b, split)| Op::BrowserRead { b, split }),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(b, graceful)| Op::BrowserDisconnect { b, graceful }),
        2 => (any::<Index>(), split()).prop_map(|(b, split)| Op::BrowserReconnect { b, split }),
    ]
}

/// A publisher connection the registry still knows.
struct Pub {
    handle: ConnectionHandle,
    client: Publisher,
    ns: usize,
    /// The peer IP, canonical.
    ip: IpAddr,
    key: SocketAddr,
    port_declared: bool,
    /// Whether its Hello was accepted (false only until an IP_LIMIT close is settled).
    accepted: bool,
    last_seen: Instant,
    blob: Option<Bytes>,
}

/// A browser, connected or not.
struct Slot {
    client: Browser,
    handle: Option<ConnectionHandle>,
    ns: usize,
    ip: usize,
    /// The list as rebuilt from the browser's events alone.
    replay: BTreeMap<SocketAddr, Server>,
}

type View = BTreeMap<SocketAddr, (Bytes, bool)>;

struct Harness {
    setup: Setup,
    registry: Registry,
    now: Instant,
    next_port: u16,
    pubs: Vec<Pub>,
    silent: Vec<(ConnectionHandle, Instant)>,
    browsers: Vec<Slot>,
    /// The model: live entries per namespace.
    entries: Vec<View>,
    /// The model: which connection owns each address per namespace.
    owners: Vec<HashMap<SocketAddr, ConnectionHandle>>,
    /// Closes the model predicts for the next `settle`.
    expected_closed: Vec<(ConnectionHandle, ErrorCode)>,
    /// Accepted events seen by the last `settle`, for the operation to check.
    accepted: Vec<Event>,
    /// How often each interesting path was taken.
    coverage: BTreeMap<&'static str, usize>,
}

fn ip(index: usize) -> IpAddr {
    IPS[index].parse().unwrap()
}

/// The epoch the registry's Welcome carries in `namespace`, if it exists.
fn ns_epoch(registry: &Registry, namespace: &str) -> Option<u64> {
    registry.namespaces().any(|n| &*n.name == namespace).then(|| registry.epoch())
}

fn strip(view: &BTreeMap<SocketAddr, Server>) -> View {
    view.iter().map(|(a, s)| (*a, (s.blob.clone(), s.port_declared))).collect()
}

impl Harness {
    fn new(setup: Setup) -> Self {
        Harness {
            registry: Registry::new(setup.config(), 0x5eed),
            setup,
            now: Instant::now(),
            next_port: 50_000,
            pubs: Vec::new(),
            silent: Vec::new(),
            browsers: Vec::new(),
            entries: vec![View::new(); NAMESPACES.len()],
            owners: vec![HashMap::new(); NAMESPACES.len()],
            expected_closed: Vec::new(),
            accepted: Vec::new(),
            coverage: BTreeMap::new(),
        }
    }

    fn hit(&mut self, path: &'static str) {
        *self.coverage.entry(path).or_default() += 1;
    }

    fn pub_index(&self, handle: ConnectionHandle) -> usize {
        self.pubs.iter().position(|p| p.handle == handle).unwrap()
    }

    /// The model's side of a publisher connection going away.
    fn release(&mut self, handle: ConnectionHandle) {
        if let Some(p) = self.pubs.iter().find(|p| p.handle == handle) {
            let (ns, key) = (p.ns, p.key);
            if self.owners[ns].get(&key) == Some(&handle) {
                self.owners[ns].remove(&key);
                self.entries[ns].remove(&key);
            }
        }
    }

    fn close_expected(&mut self, handle: ConnectionHandle, code: ErrorCode) {
        self.release(handle);
        self.expected_closed.push((handle, code));
    }

    /// Drains the registry's events, plays the driver's part for every
    /// Closed one (final bytes to the client, then `remove`), and checks the
    /// closes against the model's prediction.
    fn settle(&mut self) {
        let mut closed = Vec::new();
        while let Some(event) = self.registry.poll_event() {
            match event {
                Event::Closed { connection, code, reason } => {
                    assert!(!reason.is_empty());
                    self.hit(code.name().unwrap_or("unknown code"));
                    closed.push((connection, code));
                    self.deliver_close(connection, code);
                    // The final-frame contract: once the final frames are
                    // taken, the registry names the close, as its event did.
                    assert_eq!(self.registry.poll_close(connection), Some((code, reason.as_str())));
                    self.registry.remove(connection);
                }
                accepted @ Event::Accepted { .. } => self.accepted.push(accepted),
            }
        }
        let mut expected = std::mem::take(&mut self.expected_closed);
        expected.sort();
        closed.sort();
        assert_eq!(closed, expected, "connections closed by the registry (left: actual, right: model)");
    }

    fn deliver_close(&mut self, connection: ConnectionHandle, code: ErrorCode) {
        let now = self.now;
        let mut buf = Vec::new();
        while self.registry.poll_transmit(connection, now, &mut buf) {}
        if code == ErrorCode::NO_ERROR {
            assert!(buf.is_empty(), "a graceful close sends no Reject");
        }
        if let Some(i) = self.pubs.iter().position(|p| p.handle == connection) {
            let mut p = self.pubs.remove(i);
            p.client.handle_input(now, &buf).unwrap();
            if code != ErrorCode::NO_ERROR {
                match p.client.poll_event() {
                    Some(PublisherEvent::Rejected { code: got, .. }) => assert_eq!(got, code),
                    other => panic!("publisher expected Rejected({code}), got {other:?}"),
                }
            }
            assert!(p.client.is_closed());
        } else if let Some(slot) = self.browsers.iter_mut().find(|s| s.handle == Some(connection)) {
            slot.handle = None;
            slot.client.handle_input(now, &buf).unwrap();
            let mut rejected = None;
            while let Some(event) = slot.client.poll_event() {
                match event {
                    BrowserEvent::Rejected { code, .. } => rejected = Some(code),
                    other => panic!("browser got {other:?} while being closed"),
                }
            }
            if code != ErrorCode::NO_ERROR {
                assert_eq!(rejected, Some(code));
            }
            assert!(slot.client.is_closed());
        } else if let Some(i) = self.silent.iter().position(|(h, _)| *h == connection) {
            self.silent.remove(i);
            assert_eq!(code, ErrorCode::HANDSHAKE_TIMEOUT);
        } else {
            panic!("registry closed unknown connection {connection}");
        }
    }

    fn take_accepted(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.accepted)
    }

    /// Lets time pass: the model predicts which connections time out.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        let expired: Vec<_> =
            self.pubs.iter().filter(|p| now >= p.last_seen + self.setup.ttl).map(|p| p.handle).collect();
        for handle in expired {
            self.close_expected(handle, ErrorCode::HEARTBEAT_TIMEOUT);
        }
        for (handle, at) in &self.silent {
            if now >= *at + self.setup.handshake {
                self.expected_closed.push((*handle, ErrorCode::HANDSHAKE_TIMEOUT));
            }
        }
        if let Some(due) = self.registry.poll_timeout() {
            assert!(due > now - by, "registry timer at {due:?} was missed");
        }
        self.registry.handle_timeout(now);
        assert!(self.registry.poll_timeout().is_none_or(|due| due > now));
        self.settle();
    }

    /// Everything publisher `i` has to send, fed to the registry in `split`-byte pieces.
    fn pump_publisher(&mut self, i: usize, split: usize) -> (bool, Result<(), Error>) {
        let mut buf = Vec::new();
        while self.pubs[i].client.poll_transmit(self.now, &mut buf) {}
        let handle = self.pubs[i].handle;
        for chunk in buf.chunks(split) {
            if let Err(e) = self.registry.handle_input(handle, self.now, chunk) {
                return (true, Err(e));
            }
        }
        (!buf.is_empty(), Ok(()))
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::PubConnect { ns, ip, port, declared, first } => self.pub_connect(ns, ip, port, declared, first),
            Op::Heartbeat { p, blob, split } => self.heartbeat(p, blob, split),
            Op::PubGoodbye { p } => {
                if self.pubs.is_empty() {
                    return;
                }
                let i = p.index(self.pubs.len());
                self.pubs[i].client.shutdown(self.now);
                let (wrote, result) = self.pump_publisher(i, usize::MAX);
                assert!(wrote);
                result.unwrap();
                self.close_expected(self.pubs[i].handle, ErrorCode::NO_ERROR);
                self.settle();
            }
            Op::PubDisconnect { p } => {
                if self.pubs.is_empty() {
                    return;
                }
                let i = p.index(self.pubs.len());
                let handle = self.pubs[i].handle;
                self.release(handle);
                self.pubs.remove(i);
                self.registry.remove(handle);
                self.settle();
            }
            Op::PubMisbehave { p, kind } => self.misbehave(p, kind),
            Op::Silent { ip: i } => {
                let handle = self.registry.accept(self.now, SocketAddr::new(ip(i), 1234)).unwrap();
                self.silent.push((handle, self.now));
            }
            Op::Advance { by } => self.advance(by),
            Op::BrowserConnect { ns, ip: i, split } => {
                let peer = SocketAddr::new(ip(i), self.next_port);
                self.next_port += 1;
                let handle = self.registry.accept(self.now, peer).unwrap();
                self.browsers.push(Slot {
                    client: Browser::new(BrowserConfig::new(NAMESPACES[ns])),
                    handle: Some(handle),
                    ns,
                    ip: i,
                    replay: BTreeMap::new(),
                });
                self.browser_hello(self.browsers.len() - 1, None, split);
            }
            Op::BrowserRead { b, split } => {
                let connected: Vec<usize> =
                    (0..self.browsers.len()).filter(|&i| self.browsers[i].handle.is_some()).collect();
                if connected.is_empty() {
                    return;
                }
                let b = connected[b.index(connected.len())];
                // Past the update interval, whatever changed is due.
                self.advance(self.setup.update);
                if self.read_browser(b, split).contains(&BrowserEvent::Reset) {
                    self.hit("reset mid-session");
                }
            }
            Op::BrowserDisconnect { b, graceful } => {
                let connected: Vec<usize> =
                    (0..self.browsers.len()).filter(|&i| self.browsers[i].handle.is_some()).collect();
                if connected.is_empty() {
                    return;
                }
                let b = connected[b.index(connected.len())];
                let handle = self.browsers[b].handle.unwrap();
                if graceful {
                    let mut buf = Vec::new();
                    self.browsers[b].client.shutdown(self.now);
                    while self.browsers[b].client.poll_transmit(self.now, &mut buf) {}
                    self.registry.handle_input(handle, self.now, &buf).unwrap();
                    self.expected_closed.push((handle, ErrorCode::NO_ERROR));
                    self.settle();
                    assert!(self.browsers[b].handle.is_none());
                } else {
                    self.registry.remove(handle);
                    self.browsers[b].handle = None;
                }
            }
            Op::BrowserReconnect { b, split } => {
                if !self.browsers.is_empty() {
                    self.reconnect_browser(b.index(self.browsers.len()), split);
                }
            }
        }
    }

    /// Drops browser `b`'s connection if it has one, then reconnects it,
    /// resuming from its last Synced revision.
    fn reconnect_browser(&mut self, b: usize, split: usize) {
        if let Some(handle) = self.browsers[b].handle.take() {
            self.registry.remove(handle);
        }
        let slot = &mut self.browsers[b];
        let old = std::mem::replace(&mut slot.client, Browser::new(BrowserConfig::new("placeholder")));
        let resume = old.resume_point();
        slot.client = old.reconnect();
        if resume.is_none() {
            assert_eq!(slot.client.servers().len(), 0);
            slot.replay.clear();
        }
        let peer = SocketAddr::new(ip(slot.ip), self.next_port);
        self.next_port += 1;
        slot.handle = Some(self.registry.accept(self.now, peer).unwrap());
        self.browser_hello(b, resume, split);
    }

    fn pub_connect(
        &mut self,
        ns: usize,
        ip_index: usize,
        port: usize,
        declared: Option<usize>,
        first: Option<Vec<u8>>,
    ) {
        let now = self.now;
        let raw = ip(ip_index);
        let canonical = raw.to_canonical();
        let handle = self.registry.accept(now, SocketAddr::new(raw, PORTS[port])).unwrap();
        let declared_port = declared.map(|d| DECLARED[d]);
        let mut config = PublisherConfig::new(NAMESPACES[ns]);
        config.declared_port = declared_port;
        let mut client = Publisher::new(config, now);
        let first = first.map(Bytes::from);
        if let Some(blob) = &first {
            client.set_heartbeat(blob.clone(), now).unwrap();
        }
        let key = SocketAddr::new(canonical, declared_port.unwrap_or(PORTS[port]));
        let port_declared = declared_port.is_some();
        // Taking over an address closes its old connection, so the per-IP limit does not apply.
        let takes_over = self.owners[ns].contains_key(&key);
        let over_limit =
            !takes_over && self.pubs.iter().filter(|p| p.ip == canonical).count() >= self.setup.max_publishers_per_ip;
        self.pubs.push(Pub {
            handle,
            client,
            ns,
            ip: canonical,
            key,
            port_declared,
            accepted: !over_limit,
            last_seen: now,
            blob: first.clone(),
        });
        let (wrote, result) = self.pump_publisher(self.pubs.len() - 1, usize::MAX);
        assert!(wrote);
        if over_limit {
            assert!(matches!(result, Err(Error::IpLimit { role: Role::Publisher, .. })), "{result:?}");
            self.expected_closed.push((handle, ErrorCode::IP_LIMIT));
            self.settle();
            assert!(self.take_accepted().is_empty());
            return;
        }
        result.unwrap();
        // The newest connection for an address takes over its entry.
        if let Some(old) = self.owners[ns].insert(key, handle) {
            self.close_expected(old, ErrorCode::REPLACED);
        }
        if let Some(blob) = first {
            self.entries[ns].insert(key, (blob, port_declared));
        }
        self.settle();
        assert_eq!(
            self.take_accepted(),
            [Event::Accepted {
                connection: handle,
                role: Role::Publisher,
                namespace: NAMESPACES[ns].into(),
                address: key,
                resumed: false,
            }]
        );
        let mut buf = Vec::new();
        while self.registry.poll_transmit(handle, now, &mut buf) {}
        let i = self.pub_index(handle);
        let p = &mut self.pubs[i];
        p.client.handle_input(now, &buf).unwrap();
        match p.client.poll_event() {
            Some(PublisherEvent::Accepted(welcome)) => {
                let info = welcome.publisher.unwrap();
                assert_eq!((info.address, info.port_declared), (key, port_declared));
                assert_eq!(Some(welcome.epoch), ns_epoch(&self.registry, NAMESPACES[ns]));
                assert_eq!(welcome.entry_ttl, self.setup.ttl);
                assert_eq!(welcome.max_blob_size, MAX_BLOB as u64);
            }
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    fn heartbeat(&mut self, p: Index, blob: Option<Vec<u8>>, split: usize) {
        // One heartbeat interval later the publisher may send again.
        self.advance(self.setup.heartbeat);
        if self.pubs.is_empty() {
            return;
        }
        let i = p.index(self.pubs.len());
        let blob = match blob {
            Some(blob) => Bytes::from(blob),
            None => self.pubs[i].blob.clone().unwrap_or_default(),
        };
        self.pubs[i].client.set_heartbeat(blob.clone(), self.now).unwrap();
        let (wrote, result) = self.pump_publisher(i, split);
        assert!(wrote, "a due heartbeat was not sent");
        result.unwrap();
        let p = &mut self.pubs[i];
        p.last_seen = self.now;
        p.blob = Some(blob.clone());
        assert_eq!(self.owners[p.ns].get(&p.key), Some(&p.handle));
        let old = self.entries[p.ns].insert(p.key, (blob, p.port_declared));
        if old.is_some_and(|(_, declared)| declared != p.port_declared) {
            self.hit("port flag changed");
        }
        self.settle();
    }

    fn misbehave(&mut self, p: Index, kind: u8) {
        if self.pubs.is_empty() {
            return;
        }
        let i = p.index(self.pubs.len());
        let handle = self.pubs[i].handle;
        let mut buf = Vec::new();
        let code = match kind {
            0 => {
                Frame::Synced { revision: 1 }.encode(&mut buf);
                Some(ErrorCode::PROTOCOL_VIOLATION)
            }
            1 => {
                Frame::Heartbeat { blob: &[7; MAX_BLOB + 1] }.encode(&mut buf);
                Some(ErrorCode::BLOB_TOO_LARGE)
            }
            2 => {
                Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    role: Role::Publisher,
                    namespace: NAMESPACES[self.pubs[i].ns],
                    token: &[],
                    declared_port: None,
                    resume: None,
                })
                .encode(&mut buf);
                Some(ErrorCode::PROTOCOL_VIOLATION)
            }
            _ => {
                // Unknown frame types are skipped, in any state.
                Frame::Unknown { frame_type: 0x3a, payload: b"from the future" }.encode(&mut buf);
                None
            }
        };
        let result = self.registry.handle_input(handle, self.now, &buf);
        match code {
            Some(code) => {
                assert_eq!(result.unwrap_err().code(), code);
                self.close_expected(handle, code);
            }
            None => result.unwrap(),
        }
        self.settle();
    }

    fn browser_hello(&mut self, b: usize, resume: Option<Resume>, split: usize) {
        let now = self.now;
        let handle = self.browsers[b].handle.unwrap();
        let mut buf = Vec::new();
        while self.browsers[b].client.poll_transmit(now, &mut buf) {}
        assert!(!buf.is_empty());
        self.registry.handle_input(handle, now, &buf).unwrap();
        self.settle();
        let resumed = match self.take_accepted().as_slice() {
            [Event::Accepted { connection, role: Role::Browser, namespace, resumed, .. }] => {
                assert_eq!(*connection, handle);
                assert_eq!(&**namespace, NAMESPACES[self.browsers[b].ns]);
                *resumed
            }
            other => panic!("expected one Accepted browser, got {other:?}"),
        };
        if resume.is_none() {
            assert!(!resumed);
        }
        self.hit(match (resume.is_some(), resumed) {
            (false, _) => "fresh browser",
            (true, true) => "resume honoured",
            (true, false) => "resume refused",
        });
        // The snapshot (or the changes since the resume point) is due at once.
        let events = self.read_browser(b, split);
        let resets = events.iter().filter(|e| **e == BrowserEvent::Reset).count();
        if resume.is_some() && !resumed {
            assert_eq!(events.first(), Some(&BrowserEvent::Reset), "a refused resume starts with a Reset");
            assert_eq!(resets, 1);
        } else {
            assert_eq!(resets, 0);
        }
        assert!(
            events.iter().any(|e| matches!(e, BrowserEvent::Synced { .. })),
            "a new session always ends its first batch with Synced"
        );
    }

    /// Pumps everything due from the registry to browser `b`, applies its
    /// events to the replay list, and checks its view.
    fn read_browser(&mut self, b: usize, split: usize) -> Vec<BrowserEvent> {
        let now = self.now;
        let handle = self.browsers[b].handle.unwrap();
        let mut buf = Vec::new();
        let mut calls = 0;
        while self.registry.poll_transmit(handle, now, &mut buf) {
            calls += 1;
        }
        if calls > 2 {
            self.hit("batch over several transmits");
        }
        let mut hits = Vec::new();
        let slot = &mut self.browsers[b];
        for chunk in buf.chunks(split) {
            slot.client.handle_input(now, chunk).unwrap();
        }
        let mut events = Vec::new();
        // Within one batch every address appears at most once: changes coalesce.
        let mut batch = HashSet::new();
        while let Some(event) = slot.client.poll_event() {
            match &event {
                BrowserEvent::Upsert(server) => {
                    assert!(batch.insert(server.address), "{} sent twice in one batch", server.address);
                    slot.replay.insert(server.address, server.clone());
                }
                BrowserEvent::Remove(address) => {
                    assert!(batch.insert(*address), "{address} sent twice in one batch");
                    assert!(slot.replay.remove(address).is_some());
                    hits.push("remove");
                }
                BrowserEvent::Synced { .. } => batch.clear(),
                BrowserEvent::Reset => {
                    slot.replay.clear();
                    batch.clear();
                    hits.push("reset");
                }
                BrowserEvent::Rejected { .. } => panic!("browser rejected: {event:?}"),
            }
            events.push(event);
        }
        for path in hits {
            self.hit(path);
        }
        self.check_browser(b);
        events
    }

    fn check_browser(&self, b: usize) {
        let slot = &self.browsers[b];
        assert!(slot.client.is_synced(), "browser not synced after reading everything due");
        let view: BTreeMap<SocketAddr, Server> = slot.client.servers().map(|s| (s.address, s.clone())).collect();
        let registry: BTreeMap<SocketAddr, Server> =
            self.registry.servers(NAMESPACES[slot.ns]).map(|s| (s.address, s)).collect();
        assert_eq!(view, registry, "browser list (left) != registry list (right)");
        assert_eq!(strip(&view), self.entries[slot.ns], "browser list (left) != model (right)");
        assert_eq!(slot.replay, view, "list rebuilt from events (left) != browser list (right)");
        // Synced at revision 0 (a namespace created before any change) leaves no resume point.
        match slot.client.resume_point() {
            Some(resume) => {
                assert_eq!(Some(resume.epoch), ns_epoch(&self.registry, NAMESPACES[slot.ns]));
                assert!(view.values().all(|s| s.revision <= resume.cursor));
            }
            None => assert!(view.is_empty()),
        }
    }

    /// Checks that hold after every operation.
    fn check(&self) {
        self.registry.check_invariants().unwrap_or_else(|e| panic!("registry invariant broken: {e}"));
        assert!(self.accepted.is_empty());
        for (ns, name) in NAMESPACES.iter().enumerate() {
            let view: View = self.registry.servers(name).map(|s| (s.address, (s.blob, s.port_declared))).collect();
            assert_eq!(view, self.entries[ns], "registry list of {name} (left) != model (right)");
            let mut revisions: Vec<u64> = self.registry.servers(name).map(|s| s.revision).collect();
            let sorted = revisions.windows(2).all(|w| w[0] < w[1]);
            assert!(sorted, "servers() not in revision order: {revisions:?}");
            revisions.clear();
        }
        let stats = self.registry.stats();
        assert!(self.pubs.iter().all(|p| p.accepted));
        assert_eq!(stats.publishers, self.pubs.len());
        assert_eq!(stats.browsers, self.browsers.iter().filter(|s| s.handle.is_some()).count());
        assert_eq!(stats.handshakes, self.silent.len());
        assert_eq!(stats.entries, self.entries.iter().map(View::len).sum::<usize>());
        assert!(stats.tombstones <= NAMESPACES.len() * self.setup.max_tombstones);
        assert!(stats.ghosts <= stats.browsers);
    }

    fn track(&mut self) {
        let stats = self.registry.stats();
        if stats.ghosts > 0 {
            self.hit("ghost");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn roles_agree_with_the_model(setup in setup(), ops in prop::collection::vec(op(), 1..100)) {
        run(setup, ops);
    }
}

fn run(setup: Setup, ops: Vec<Op>) -> BTreeMap<&'static str, usize> {
    let mut harness = Harness::new(setup);
    for op in ops {
        harness.apply(op);
        harness.check();
        harness.track();
    }
    // In the end every browser, reconnected if need be, agrees with the model.
    for b in 0..harness.browsers.len() {
        if harness.browsers[b].handle.is_some() {
            harness.advance(harness.setup.update);
            harness.read_browser(b, usize::MAX);
        } else {
            harness.reconnect_browser(b, 7);
        }
        harness.check();
    }
    harness.coverage
}

/// The generator is only as good as the paths it reaches: a fixed-seed run
/// must take every interesting one.
#[test]
fn the_generator_reaches_every_interesting_path() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let coverage = std::cell::RefCell::new(BTreeMap::<&'static str, usize>::new());
    runner
        .run(&(setup(), prop::collection::vec(op(), 1..100)), |(setup, ops)| {
            for (path, n) in run(setup, ops) {
                *coverage.borrow_mut().entry(path).or_default() += n;
            }
            Ok(())
        })
        .unwrap();
    let coverage = coverage.into_inner();
    println!("{coverage:#?}");
    for path in [
        "NO_ERROR",
        "REPLACED",
        "IP_LIMIT",
        "HEARTBEAT_TIMEOUT",
        "HANDSHAKE_TIMEOUT",
        "BLOB_TOO_LARGE",
        "PROTOCOL_VIOLATION",
        "fresh browser",
        "resume honoured",
        "resume refused",
        "batch over several transmits",
        "remove",
        "reset mid-session",
        "ghost",
        "port flag changed",
    ] {
        assert!(coverage.get(path).is_some_and(|&n| n > 0), "no case reached {path:?}: {coverage:#?}");
    }
}
