//! Behaviour of the three roles wired together through real encoded bytes:
//! coalescing, O(1) memory per browser, tombstone bounds and Reset, resume
//! after reconnect, every limit's Reject code, Goodbye, declared ports,
//! address normalization, publisher refresh, and arbitrary input.
//!
//! Time is simulated: `World::now` starts at an `Instant` and moves only
//! when a test advances it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use metaserve_proto::frame::{Frame, Hello, Upsert};
use metaserve_proto::{
    Browser, BrowserConfig, BrowserEvent, Error, ErrorCode, Publisher, PublisherConfig, PublisherEvent, RegistryConfig,
    Resume, Role, Server, Welcome, PROTOCOL_VERSION,
};

/// The browser's list, by address.
fn list(browser: &Browser) -> HashMap<SocketAddr, Server> {
    browser.servers().map(|s| (s.address, s.clone())).collect()
}

/// The epoch of the registry (namespace) the browser is connected to, from its Welcome.
fn welcome_epoch(browser: &Browser) -> u64 {
    browser.welcome().expect("welcomed").epoch
}

/// Asserts that the browser's list equals the registry's list of [`NS`]
/// (addresses, blobs, port flags and revisions).
fn assert_same_list(world: &World, browser: &Browser) {
    assert_eq!(list(browser), world.listing(NS), "browser list differs from the registry's");
}

// ---------------------------------------------------------------------------
// Revisions, not queues
// ---------------------------------------------------------------------------

#[test]
fn an_entry_changed_ten_times_between_reads_is_sent_once_with_the_newest_blob() {
    let mut world = World::new(RegistryConfig::default());
    let mut busy = world.publisher("192.0.2.1:27960", "v0");
    let mut quiet = world.publisher("192.0.2.2:27960", "quiet");
    let mut b = world.browser("198.51.100.1:50000");
    assert_eq!(b.browser.servers().len(), 2);

    let applied_before = world.registry.stats().heartbeats_applied;
    for v in 1..=10 {
        // One heartbeat interval between changes, so each one reaches the
        // registry (the publisher itself coalesces faster ones).
        world.advance(secs(1));
        world.heartbeat(&mut busy, &format!("v{v}"));
        world.pump(&mut quiet);
    }
    assert_eq!(world.registry.stats().heartbeats_applied - applied_before, 10, "all ten changes reached the registry");

    let read = world.read(&mut b);
    assert_eq!(read.upserts_for(busy.address()), [&b"v10"[..]], "sent once, newest blob");
    assert_eq!(read.upsert_count(), 1, "the unchanged entry is not re-sent");
    assert_eq!(read.remove_count(), 0);
    assert_eq!(read.upserted(), [busy.address()]);
    assert!(matches!(read.events.last(), Some(BrowserEvent::Synced { snapshot: false, .. })));
    assert_eq!(&b.browser.server(&busy.address()).unwrap().blob[..], b"v10");
    assert_same_list(&world, &b.browser);
    world.check();
}

#[test]
fn a_browser_that_never_reads_costs_constant_memory_while_100k_heartbeats_arrive() {
    const PUBLISHERS: usize = 100;
    const ROUNDS: usize = 1_000; // 100 × 1,000 = 100,000 heartbeats
    let config = RegistryConfig::default();
    let max_tombstones = config.max_tombstones;
    let mut world = World::new(config);
    let mut pubs: Vec<Pub> = (0..PUBLISHERS)
        .map(|i| world.publisher(&format!("10.0.{}.{}:27960", i / 200, i % 200 + 1), &format!("server {i} round 0")))
        .collect();
    let mut sleeper = world.browser("198.51.100.1:50000");
    assert_eq!(sleeper.browser.servers().len(), PUBLISHERS);

    let memory_before = world.registry.session_memory(sleeper.conn).unwrap();
    let applied_before = world.registry.stats().heartbeats_applied;
    let mut heartbeat_bytes = 0usize;
    for round in 1..=ROUNDS {
        world.advance(world.registry.config().heartbeat_interval);
        for (i, p) in pubs.iter_mut().enumerate() {
            p.publisher.set_heartbeat(format!("server {i} round {round}").into(), world.now).unwrap();
            let sent = world.upload(p.conn, &mut p.publisher).unwrap();
            assert!(sent > 0, "publisher {i} sent its heartbeat in round {round}");
            heartbeat_bytes += sent;
        }
        if round % 100 == 0 {
            let stats = world.registry.stats();
            assert_eq!(world.registry.session_memory(sleeper.conn), Some(memory_before), "round {round}");
            assert!(
                world.registry.log_nodes() <= stats.entries + max_tombstones + stats.browsers,
                "round {round}: {} log nodes for {} entries",
                world.registry.log_nodes(),
                stats.entries
            );
            // Stronger: no tombstones here, so only the sleeper's pin can add a node.
            assert!(world.registry.log_nodes() <= PUBLISHERS + 1);
            world.check();
        }
    }
    let stats = world.registry.stats();
    assert_eq!(stats.heartbeats_applied - applied_before, (PUBLISHERS * ROUNDS) as u64);
    assert_eq!(stats.entries, PUBLISHERS);
    assert!(world.events.iter().all(|e| !matches!(e, metaserve_proto::Event::Closed { .. })));

    // Now it reads: each entry once, with its newest blob.
    let read = world.read(&mut sleeper);
    assert_eq!(read.upsert_count(), PUBLISHERS);
    for (i, p) in pubs.iter().enumerate() {
        let newest = format!("server {i} round {ROUNDS}");
        assert_eq!(read.upserts_for(p.address()), [newest.as_bytes()]);
    }
    assert_eq!(read.remove_count() + read.resets(), 0);
    assert!(matches!(read.frames.last(), Some(Wire::Synced(_))));
    // What it receives is bounded by the entries, not the heartbeats.
    let largest_upsert = Frame::Upsert(Upsert {
        revision: u64::MAX >> 2,
        address: "[::1]:1".parse().unwrap(),
        port_declared: false,
        blob: format!("server {} round {ROUNDS}", PUBLISHERS - 1).as_bytes(),
    })
    .encoded_len();
    let bound = PUBLISHERS * largest_upsert + Frame::Synced { revision: u64::MAX >> 2 }.encoded_len();
    assert!(read.bytes <= bound, "received {} bytes, bound {bound}", read.bytes);
    assert!(read.bytes * 500 < heartbeat_bytes, "{} bytes out vs {heartbeat_bytes} in", read.bytes);
    assert_same_list(&world, &sleeper.browser);
    assert_eq!(world.registry.session_memory(sleeper.conn), Some(memory_before));
    world.check();
}

#[test]
fn tombstones_are_bounded_and_a_browser_that_fell_behind_gets_reset_and_a_fresh_snapshot() {
    let config = RegistryConfig { max_tombstones: 5, ..RegistryConfig::default() };
    let mut world = World::new(config);
    let mut pubs: Vec<Pub> = (0..20).map(|i| world.publisher(&format!("192.0.2.{}:27960", i + 1), "up")).collect();
    let mut steady = world.browser("198.51.100.1:50000"); // reads after every change
    let mut late = world.browser("198.51.100.2:50000"); // misses exactly the bound
    let mut gone = world.browser("198.51.100.3:50000"); // misses more than the bound

    let leave = |world: &mut World, p: &mut Pub, steady: &mut Brw, i: usize| {
        if i % 2 == 0 {
            world.goodbye(p);
        } else {
            world.registry.remove(p.conn); // the connection just drops
        }
        let stats = world.registry.stats();
        assert!(stats.tombstones <= 5, "{} tombstones", stats.tombstones);
        assert!(world.registry.log_nodes() <= stats.entries + 5 + stats.browsers);
        world.check();
        world.advance(secs(1));
        let read = world.read(steady);
        assert_eq!(read.resets(), 0);
        assert_eq!(read.removed(), [p.address()]);
    };

    // Phase 1: five leave (= max_tombstones).
    for (i, p) in pubs.iter_mut().enumerate().take(5) {
        leave(&mut world, p, &mut steady, i);
    }
    world.advance(secs(1));
    let read = world.read(&mut late);
    assert_eq!(read.resets(), 0, "within the tombstone bound: no Reset");
    assert_eq!(read.remove_count(), 5);
    assert_eq!(read.removed().len(), 5);
    assert_same_list(&world, &late.browser);

    // Phase 2: five more leave; `gone` has now missed ten removals.
    for (i, p) in pubs.iter_mut().enumerate().skip(5).take(5) {
        leave(&mut world, p, &mut steady, i);
    }
    assert_eq!(world.registry.stats().tombstones, 5);
    world.advance(secs(1));

    let read = world.read(&mut late);
    assert_eq!(read.resets(), 0, "missed exactly the bound again: no Reset");
    assert_eq!(read.remove_count(), 5);
    assert_same_list(&world, &late.browser);

    let read = world.read(&mut gone);
    assert_eq!(read.events.first(), Some(&BrowserEvent::Reset), "Reset first: {:?}", read.events);
    assert_eq!(read.resets(), 1);
    assert_eq!(read.remove_count(), 0, "a fresh snapshot has no removals");
    assert_eq!(read.upserted().len(), 10);
    assert!(matches!(read.events.last(), Some(BrowserEvent::Synced { snapshot: true, .. })));
    assert!(gone.browser.is_synced());
    assert_same_list(&world, &gone.browser);
    assert_same_list(&world, &steady.browser);

    // After the Reset it follows normally.
    world.advance(secs(1));
    world.heartbeat(&mut pubs[15], "changed");
    world.advance(secs(1));
    let read = world.read(&mut gone);
    assert_eq!(read.resets(), 0);
    assert_eq!(read.upserted(), [pubs[15].address()]);
    assert_same_list(&world, &gone.browser);
    world.check();
}

// ---------------------------------------------------------------------------
// Resume after reconnect
// ---------------------------------------------------------------------------

#[test]
fn a_reconnecting_browser_receives_only_what_changed() {
    let mut world = World::new(RegistryConfig::default());
    let mut pubs: Vec<Pub> = (0..6).map(|i| world.publisher(&format!("192.0.2.{}:27960", i + 1), "v0")).collect();
    let mut b = world.browser("198.51.100.1:50000");
    assert_eq!(b.browser.servers().len(), 6);
    let resume = b.browser.resume_point().expect("synced browser has a resume point");
    assert_eq!(resume.epoch, welcome_epoch(&b.browser));

    // The connection drops.
    world.registry.remove(b.conn);
    world.check();

    // Meanwhile: two updates (one of them four times), one removal, one
    // addition, and a refresh with the same blob.
    world.advance(secs(1));
    world.heartbeat(&mut pubs[0], "v1");
    world.heartbeat(&mut pubs[1], "v1");
    for v in ["a", "b", "c"] {
        world.advance(secs(1));
        world.heartbeat(&mut pubs[1], v);
    }
    world.heartbeat(&mut pubs[4], "v0"); // same blob: not a change
    world.goodbye(&mut pubs[2]);
    let added = world.publisher("192.0.2.100:27960", "new");
    world.advance(secs(1));

    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    let conn = world.accept(b.peer);
    let mut b = Brw { browser, conn, peer: b.peer };
    let read = world.read(&mut b);
    assert_eq!(world.accepted_resumed(conn), Some(true));
    assert_eq!(read.resets(), 0);
    let upserted: HashSet<_> = read.upserted().into_iter().collect();
    assert_eq!(upserted, HashSet::from([pubs[0].address(), pubs[1].address(), added.address()]));
    assert_eq!(read.upsert_count(), 3, "each changed entry exactly once");
    assert_eq!(read.removed(), [pubs[2].address()]);
    assert_eq!(read.remove_count(), 1);
    assert_eq!(&b.browser.server(&pubs[1].address()).unwrap().blob[..], b"c");
    assert!(matches!(read.events.last(), Some(BrowserEvent::Synced { .. })));
    assert!(b.browser.is_synced());
    assert_same_list(&world, &b.browser);
    world.check();
}

#[test]
fn resuming_against_another_registry_epoch_gets_reset_and_a_full_snapshot() {
    let mut first = World::with_epoch(RegistryConfig::default(), 1111);
    let _old: Vec<Pub> = (0..3).map(|i| first.publisher(&format!("192.0.2.{}:27960", i + 1), "old")).collect();
    let mut b = first.browser("198.51.100.1:50000");
    let resume = b.browser.resume_point().unwrap();
    assert_eq!(resume.epoch, welcome_epoch(&b.browser));

    // The meta server restarted: a new registry, another epoch, other entries.
    let mut second = World::with_epoch(RegistryConfig::default(), 2222);
    assert_ne!(second.registry.epoch(), first.registry.epoch());
    let fresh: Vec<Pub> = (0..4).map(|i| second.publisher(&format!("203.0.113.{}:27960", i + 1), "new")).collect();
    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    let conn = second.accept(b.peer);
    let mut b = Brw { browser, conn, peer: b.peer };
    let read = second.read(&mut b);

    assert_eq!(second.accepted_resumed(conn), Some(false));
    assert_eq!(read.events.first(), Some(&BrowserEvent::Reset));
    assert_eq!(read.resets(), 1);
    assert_eq!(read.upsert_count(), fresh.len());
    assert!(matches!(read.events.last(), Some(BrowserEvent::Synced { snapshot: true, .. })));
    assert_same_list(&second, &b.browser);
    assert_eq!(b.browser.resume_point().unwrap().epoch, welcome_epoch(&b.browser));
    assert_ne!(welcome_epoch(&b.browser), resume.epoch);
    second.check();
}

#[test]
fn resuming_with_a_cursor_below_the_tombstone_floor_gets_reset() {
    let config = RegistryConfig { max_tombstones: 2, ..RegistryConfig::default() };
    let mut world = World::new(config);
    let mut pubs: Vec<Pub> = (0..8).map(|i| world.publisher(&format!("192.0.2.{}:27960", i + 1), "v0")).collect();

    // Within the bound: two leave while disconnected → resumed, two Removes.
    let mut b = world.browser("198.51.100.1:50000");
    world.registry.remove(b.conn);
    world.goodbye(&mut pubs[0]);
    world.goodbye(&mut pubs[1]);
    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    b = Brw { browser, conn: world.accept(b.peer), peer: b.peer };
    let read = world.read(&mut b);
    assert_eq!(world.accepted_resumed(b.conn), Some(true));
    assert_eq!(read.resets(), 0);
    assert_eq!(read.remove_count(), 2);
    assert_eq!(read.upsert_count(), 0);
    assert_same_list(&world, &b.browser);

    // Beyond the bound: three leave while disconnected → Reset + snapshot.
    world.registry.remove(b.conn);
    for p in &mut pubs[2..5] {
        world.goodbye(p);
    }
    assert_eq!(world.registry.stats().tombstones, 2);
    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    assert!(browser.resume_point().is_some());
    b = Brw { browser, conn: world.accept(b.peer), peer: b.peer };
    let read = world.read(&mut b);
    assert_eq!(world.accepted_resumed(b.conn), Some(false));
    assert_eq!(read.events.first(), Some(&BrowserEvent::Reset));
    assert_eq!(read.resets(), 1);
    assert_eq!(read.upsert_count(), 3);
    assert!(matches!(read.events.last(), Some(BrowserEvent::Synced { snapshot: true, .. })));
    assert_same_list(&world, &b.browser);
    world.check();
}

#[test]
fn a_browser_cut_off_during_the_snapshot_after_a_reset_does_not_resume_with_its_old_cursor() {
    // Synced with the old registry at revision 50.
    let mut first = World::with_epoch(RegistryConfig::default(), 1111);
    let _old: Vec<Pub> = (0..50).map(|i| first.publisher(&format!("10.1.0.{}:27960", i + 1), "old")).collect();
    let mut b = first.browser("198.51.100.1:50000");
    assert_eq!(b.browser.resume_point().unwrap().cursor, 50);

    // The new registry has 60 entries and sends them in small chunks.
    let config = RegistryConfig { transmit_chunk: 100, ..RegistryConfig::default() };
    let mut second = World::with_epoch(config, 2222);
    let _new: Vec<Pub> = (0..60).map(|i| second.publisher(&format!("10.2.0.{}:27960", i + 1), "new")).collect();
    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    let mut b = Brw { browser, conn: second.accept(b.peer), peer: b.peer };
    second.upload(b.conn, &mut b.browser).unwrap();
    // The stream takes one write: Welcome, Reset and the first few entries.
    let mut chunk = Vec::new();
    assert!(second.registry.poll_transmit(b.conn, second.now, &mut chunk));
    b.browser.handle_input(second.now, &chunk).unwrap();
    assert_eq!(decode_all(&chunk)[1], Wire::Reset);
    let partial = b.browser.servers().len();
    assert!(partial > 0 && partial < 60, "{partial} entries in the first chunk");
    assert!(!b.browser.is_synced());
    let new_epoch = welcome_epoch(&b.browser);

    // Cut off before the snapshot completed: the old registry's cursor
    // means nothing here, so the reconnect must not resume from it.
    second.registry.remove(b.conn);
    let browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
    if let Some(resume) = browser.resume_point() {
        assert_ne!(resume, Resume { epoch: new_epoch, cursor: 50 }, "old cursor, new epoch");
    }
    let mut b = Brw { browser, conn: second.accept(b.peer), peer: b.peer };
    second.read(&mut b);
    assert!(b.browser.is_synced());
    assert_same_list(&second, &b.browser);
    second.check();
}

// ---------------------------------------------------------------------------
// Every limit and its Reject code
// ---------------------------------------------------------------------------

/// A registry with one publisher and one synced browser in [`NS`] that must
/// not be affected by whatever goes wrong for others.
struct Bystanders {
    publisher: Pub,
    browser: Brw,
    entry: Server,
}

fn with_bystanders(config: RegistryConfig) -> (World, Bystanders) {
    let mut world = World::new(config);
    let publisher = world.publisher("192.0.2.200:27960", "bystander");
    let browser = world.browser("198.51.100.200:50000");
    let entry = world.listing(NS).remove(&publisher.address()).unwrap();
    (world, Bystanders { publisher, browser, entry })
}

impl Bystanders {
    /// Their entry is exactly as it was, their connections are open, and the
    /// browser still lists the entry (and got no Reset).
    fn assert_untouched(&mut self, world: &mut World) {
        assert_eq!(world.listing(NS).get(&self.entry.address), Some(&self.entry));
        assert!(world.closed(self.publisher.conn).is_empty(), "bystander publisher closed");
        assert!(world.closed(self.browser.conn).is_empty(), "bystander browser closed");
        world.advance(world.registry.config().update_interval);
        let read = world.read(&mut self.browser);
        assert_eq!(read.resets(), 0);
        assert!(!read.removed().contains(&self.entry.address));
        assert_eq!(self.browser.browser.server(&self.entry.address), Some(&self.entry));
        assert!(!self.publisher.publisher.is_closed());
        world.check();
    }
}

/// The registry has closed `conn` with `code`: it reported `Event::Closed`
/// once, its only output is a Reject with that code and the same reason,
/// and the client state machine turns it into `Rejected`. Then the driver
/// drops the connection.
fn assert_rejected(
    world: &mut World,
    conn: metaserve_proto::ConnectionHandle,
    client: &mut dyn Client,
    code: ErrorCode,
) {
    let closed = world.closed(conn);
    assert_eq!(closed.len(), 1, "one Closed event for the connection: {closed:?}");
    let (closed_code, reason) = closed[0].clone();
    assert_eq!(closed_code, code, "Event::Closed code ({reason})");
    world.check();

    // A Hello accepted in the input that ended the session had its Welcome
    // due: it goes out before the Reject.
    let welcome_due = world.accepted_resumed(conn).is_some() && !client.welcomed();
    let bytes = world.download(conn, client);
    let frames = decode_all(&bytes);
    let rejects = if welcome_due {
        assert!(matches!(frames.first(), Some(Wire::Welcome(_))), "the Welcome that was due comes first: {frames:?}");
        &frames[1..]
    } else {
        &frames[..]
    };
    assert_eq!(rejects, [Wire::Reject(code, reason.clone())]);
    assert_eq!(client.rejection(), Some((code, reason)));
    // Nothing more comes, and more input is ignored.
    let mut more = Vec::new();
    assert!(!world.registry.poll_transmit(conn, world.now, &mut more));
    assert!(world.registry.handle_input(conn, world.now, &encode(&Frame::Goodbye)).is_ok());
    world.collect_events();
    assert_eq!(world.closed(conn).len(), 1);

    world.registry.remove(conn);
    world.check();
}

/// Connects `client` from `peer` and sends what it has to send; returns the
/// connection and the registry's verdict.
fn connect(
    world: &mut World,
    peer: &str,
    client: &mut dyn Client,
) -> (metaserve_proto::ConnectionHandle, Result<usize, Error>) {
    let conn = world.accept(addr(peer));
    let result = world.upload(conn, client);
    (conn, result)
}

fn hello_bytes(version: u64, role: Role, namespace: &str, token: &[u8]) -> Vec<u8> {
    encode(&Frame::Hello(Hello { version, role, namespace, token, declared_port: None, resume: None }))
}

#[test]
fn unsupported_version() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    let before = world.registry.stats();
    let mut publisher = Publisher::new(PublisherConfig::new(NS), world.now);
    let _ = publisher.poll_transmit(world.now, &mut Vec::new()); // its own Hello is replaced by ours
    let conn = world.accept(addr("192.0.2.1:27960"));
    let err = world.send_raw(conn, &hello_bytes(2, Role::Publisher, NS, b"")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
    assert_rejected(&mut world, conn, &mut publisher, ErrorCode::UNSUPPORTED_VERSION);
    assert_eq!(world.registry.stats(), before);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn invalid_namespace() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    let too_long = "x".repeat(world.registry.config().max_namespace_len + 1);
    let longest = "x".repeat(world.registry.config().max_namespace_len);
    for (i, namespace) in ["", too_long.as_str(), "bad\nname", "tab\there", "nul\0"].into_iter().enumerate() {
        let mut publisher = Publisher::new(PublisherConfig::new(namespace), world.now);
        publisher.set_heartbeat("x".into(), world.now).unwrap();
        let (conn, result) = connect(&mut world, &format!("192.0.2.{}:1", i + 1), &mut publisher);
        assert_eq!(result.unwrap_err().code(), ErrorCode::INVALID_NAMESPACE, "{namespace:?}");
        assert_rejected(&mut world, conn, &mut publisher, ErrorCode::INVALID_NAMESPACE);

        let mut browser = Browser::new(BrowserConfig::new(namespace));
        let (conn, result) = connect(&mut world, &format!("198.51.100.{}:1", i + 1), &mut browser);
        assert_eq!(result.unwrap_err().code(), ErrorCode::INVALID_NAMESPACE, "{namespace:?}");
        assert_rejected(&mut world, conn, &mut browser, ErrorCode::INVALID_NAMESPACE);
    }
    // The longest allowed name and non-ASCII text are fine.
    let p = world.publisher_with("192.0.2.10:1", PublisherConfig::new(longest), "ok");
    let q = world.publisher_with("192.0.2.11:1", PublisherConfig::new("Ünreal Tournament ⚔"), "ok");
    assert!(!p.publisher.is_closed() && !q.publisher.is_closed());
    bystanders.assert_untouched(&mut world);
}

#[test]
fn unauthorized_without_the_right_token() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    world.registry.set_publish_tokens(NS, ["s3cret", "other-secret"]);
    let with_token = |token: Option<&'static [u8]>| PublisherConfig {
        token: token.map(Bytes::from_static),
        ..PublisherConfig::new(NS)
    };
    for (i, token) in [None, Some(&b"wrong"[..]), Some(&b"s3cre"[..]), Some(&b"s3cret!"[..])].into_iter().enumerate() {
        let mut publisher = Publisher::new(with_token(token), world.now);
        let (conn, result) = connect(&mut world, &format!("192.0.2.{}:1", i + 1), &mut publisher);
        assert_eq!(result.unwrap_err(), Error::Unauthorized, "token {token:?}");
        assert_rejected(&mut world, conn, &mut publisher, ErrorCode::UNAUTHORIZED);
    }
    // Either correct token is accepted; browsers need none.
    let a = world.publisher_with("192.0.2.10:1", with_token(Some(b"s3cret")), "a");
    let b = world.publisher_with("192.0.2.11:1", with_token(Some(b"other-secret")), "b");
    assert!(world.listing(NS).contains_key(&a.address()) && world.listing(NS).contains_key(&b.address()));
    world.browser("198.51.100.1:1");
    // Another namespace is not affected; lifting the requirement works.
    world.publisher_with("192.0.2.12:1", PublisherConfig::new("open"), "c");
    world.registry.set_publish_tokens(NS, Vec::<&[u8]>::new());
    world.publisher("192.0.2.13:1", "d");
    bystanders.assert_untouched(&mut world);
}

fn small_blobs() -> RegistryConfig {
    RegistryConfig { max_blob_size: 100, ..RegistryConfig::default() }
}

#[test]
fn blob_too_large() {
    let (mut world, mut bystanders) = with_bystanders(small_blobs());
    let before = world.registry.stats();
    // Before the Welcome the publisher cannot know the limit: the registry enforces it.
    let mut publisher = Publisher::new(PublisherConfig::new(NS), world.now);
    publisher.set_heartbeat(vec![b'x'; 101].into(), world.now).unwrap();
    let (conn, result) = connect(&mut world, "192.0.2.1:27960", &mut publisher);
    assert_eq!(result.unwrap_err(), Error::BlobTooLarge { len: 101, max: 100 });
    assert_rejected(&mut world, conn, &mut publisher, ErrorCode::BLOB_TOO_LARGE);
    assert_eq!(world.registry.stats().entries, before.entries);

    // An accepted publisher whose blob grows too large is cut off, and its
    // entry (with the last good blob) goes.
    let mut p = world.publisher("192.0.2.2:27960", "fits");
    assert!(world.listing(NS).contains_key(&p.address()));
    // Its own state machine refuses, knowing the limit from the Welcome...
    let err = p.publisher.set_heartbeat(vec![b'y'; 101].into(), world.now).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BLOB_TOO_LARGE);
    // ... so hand-craft the heartbeat.
    let err = world.send_raw(p.conn, &encode(&Frame::Heartbeat { blob: &[b'y'; 101] })).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BLOB_TOO_LARGE);
    assert!(!world.listing(NS).contains_key(&p.address()));
    assert_rejected(&mut world, p.conn, &mut p.publisher, ErrorCode::BLOB_TOO_LARGE);
    // Exactly the maximum is fine.
    world.publisher("192.0.2.3:27960", &"z".repeat(100));
    bystanders.assert_untouched(&mut world);
}

#[test]
fn frame_too_large() {
    let (mut world, mut bystanders) = with_bystanders(small_blobs());
    let max_frame = world.registry.config().max_frame_size();
    let mut publisher = Publisher::new(PublisherConfig::new(NS), world.now);
    publisher.set_heartbeat(vec![b'x'; max_frame + 1].into(), world.now).unwrap();
    let (conn, result) = connect(&mut world, "192.0.2.1:27960", &mut publisher);
    assert_eq!(result.unwrap_err().code(), ErrorCode::FRAME_TOO_LARGE);
    assert_rejected(&mut world, conn, &mut publisher, ErrorCode::FRAME_TOO_LARGE);

    // Before any Hello, from a header alone: the payload never has to arrive.
    let mut browser = Browser::new(BrowserConfig::new(NS));
    let _ = browser.poll_transmit(world.now, &mut Vec::new());
    let conn = world.accept(addr("198.51.100.1:1"));
    let header = [0x04, 0x80, 0x10, 0x00, 0x00]; // Heartbeat, 1 MiB payload
    assert_eq!(world.send_raw(conn, &header).unwrap_err().code(), ErrorCode::FRAME_TOO_LARGE);
    assert_rejected(&mut world, conn, &mut browser, ErrorCode::FRAME_TOO_LARGE);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn ip_limit_for_publishers_and_browsers() {
    let config = RegistryConfig { max_publishers_per_ip: 2, max_browsers_per_ip: 1, ..RegistryConfig::default() };
    let (mut world, mut bystanders) = with_bystanders(config);
    world.publisher("192.0.2.1:1000", "a");
    world.publisher("192.0.2.1:1001", "b");
    let mut third = Publisher::new(PublisherConfig::new(NS), world.now);
    third.set_heartbeat("c".into(), world.now).unwrap();
    let (conn, result) = connect(&mut world, "192.0.2.1:1002", &mut third);
    assert_eq!(result.unwrap_err().code(), ErrorCode::IP_LIMIT);
    assert_rejected(&mut world, conn, &mut third, ErrorCode::IP_LIMIT);
    assert_eq!(world.listing(NS).len(), 3);
    // The limit is per IP, and per role.
    world.publisher("192.0.2.2:1000", "d");
    world.browser("192.0.2.1:2000");

    world.browser("198.51.100.1:1");
    let mut second = Browser::new(BrowserConfig::new(NS));
    let (conn, result) = connect(&mut world, "198.51.100.1:2", &mut second);
    assert_eq!(result.unwrap_err().code(), ErrorCode::IP_LIMIT);
    assert_rejected(&mut world, conn, &mut second, ErrorCode::IP_LIMIT);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn server_full_for_publishers_browsers_and_handshakes() {
    let config = RegistryConfig { max_publishers: 2, max_browsers: 2, max_handshakes: 3, ..RegistryConfig::default() };
    let (mut world, mut bystanders) = with_bystanders(config);
    let second = world.publisher("192.0.2.1:1", "second");
    let mut third = Publisher::new(PublisherConfig::new(NS), world.now);
    let (conn, result) = connect(&mut world, "192.0.2.2:1", &mut third);
    assert_eq!(result.unwrap_err().code(), ErrorCode::SERVER_FULL);
    assert_rejected(&mut world, conn, &mut third, ErrorCode::SERVER_FULL);

    world.browser("198.51.100.1:1");
    let mut third = Browser::new(BrowserConfig::new(NS));
    let (conn, result) = connect(&mut world, "198.51.100.2:1", &mut third);
    assert_eq!(result.unwrap_err().code(), ErrorCode::SERVER_FULL);
    assert_rejected(&mut world, conn, &mut third, ErrorCode::SERVER_FULL);

    // Pending handshakes: the fourth accept() is refused outright.
    let pending: Vec<_> = (1..=3).map(|i| world.accept(addr(&format!("203.0.113.{i}:1")))).collect();
    let err = world.registry.accept(world.now, addr("203.0.113.4:1")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SERVER_FULL);
    assert_eq!(world.registry.stats().handshakes, 3);
    world.check();
    // A handshake that completes (or goes) frees its slot.
    world.registry.remove(pending[0]);
    world.accept(addr("203.0.113.4:1"));
    // Seats free up when a publisher leaves.
    let mut second = second;
    world.goodbye(&mut second);
    world.registry.remove(pending[1]);
    world.publisher("192.0.2.2:1", "third");
    bystanders.assert_untouched(&mut world);
}

#[test]
fn namespace_limit() {
    let config = RegistryConfig { max_namespaces: 2, ..RegistryConfig::default() };
    let (mut world, mut bystanders) = with_bystanders(config);
    let mut other = world.publisher_with("192.0.2.1:1", PublisherConfig::new("other"), "x");
    let mut third = Publisher::new(PublisherConfig::new("third"), world.now);
    let (conn, result) = connect(&mut world, "192.0.2.2:1", &mut third);
    assert_eq!(result.unwrap_err(), Error::NamespaceLimit { max: 2 });
    assert_rejected(&mut world, conn, &mut third, ErrorCode::NAMESPACE_LIMIT);
    // A browser may wait for a namespace nobody publishes in yet: it takes
    // no slot, and its (empty) list is complete.
    let mut waiting = world.browser_with("198.51.100.2:1", BrowserConfig::new("third"));
    assert_eq!(waiting.browser.servers().count(), 0);
    // Existing namespaces still take newcomers; an emptied one frees its slot.
    world.publisher("192.0.2.3:1", "more");
    world.goodbye(&mut other);
    let game = world.publisher_with("192.0.2.2:1", PublisherConfig::new("third"), "x");
    world.advance(secs(1));
    world.read(&mut waiting);
    assert!(waiting.browser.server(&game.address()).is_some(), "the waiting browser sees the new game");
    bystanders.assert_untouched(&mut world);
}

/// Browsers cannot squat the namespace table: a thousand browsers of
/// namespaces without publishers leave room for every new game.
#[test]
fn browsers_of_empty_namespaces_do_not_lock_games_out() {
    let config = RegistryConfig { max_namespaces: 4, max_browsers_per_ip: 1_000, ..RegistryConfig::default() };
    let (mut world, mut bystanders) = with_bystanders(config);
    let squatters: Vec<_> = (0..1_000)
        .map(|i| world.browser_with("203.0.113.9:1", BrowserConfig::new(format!("squat-{i}").as_str())))
        .collect();
    assert_eq!(world.registry.stats().namespaces, 1_001);
    for game in ["a", "b", "c"] {
        world.publisher_with(&format!("192.0.2.{}:1", game.as_bytes()[0]), PublisherConfig::new(game), "x");
    }
    // Four namespaces with publishers (the bystanders' and three games): full.
    let mut fifth = Publisher::new(PublisherConfig::new("squat-7"), world.now);
    let (conn, result) = connect(&mut world, "192.0.2.50:1", &mut fifth);
    assert_eq!(result.unwrap_err(), Error::NamespaceLimit { max: 4 });
    assert_rejected(&mut world, conn, &mut fifth, ErrorCode::NAMESPACE_LIMIT);
    world.check();
    drop(squatters);
    bystanders.assert_untouched(&mut world);
}

/// One host (or one network) holding connections that never say Hello gets
/// its share of the pending-handshake table, not all of it.
#[test]
fn pending_handshakes_are_shared_per_ip_and_per_network() {
    let config = RegistryConfig {
        max_handshakes: 100,
        max_handshakes_per_ip: 4,
        max_handshakes_per_network: 10,
        ..RegistryConfig::default()
    };
    let (mut world, mut bystanders) = with_bystanders(config);
    for _ in 0..4 {
        world.accept(addr("203.0.113.1:1"));
    }
    let refused = world.registry.accept(world.now, addr("203.0.113.1:2")).unwrap_err();
    assert_eq!(refused, Error::HandshakeLimit { from: "203.0.113.1".parse().unwrap(), prefix_len: None, max: 4 });
    assert_eq!(refused.code(), ErrorCode::IP_LIMIT);
    assert_eq!(refused.to_string(), "too many pending handshakes from 203.0.113.1 (limit 4)");
    // IPv4-mapped IPv6 is the same host.
    let mapped = world.registry.accept(world.now, addr("[::ffff:203.0.113.1]:3")).unwrap_err();
    assert_eq!(mapped.code(), ErrorCode::IP_LIMIT);
    // Other hosts of the network fill its share...
    for host in 2..=7 {
        world.accept(addr(&format!("203.0.113.{host}:1")));
    }
    let refused = world.registry.accept(world.now, addr("203.0.113.8:1")).unwrap_err();
    assert_eq!(refused.to_string(), "too many pending handshakes from 203.0.113.0/24 (limit 10)");
    let v6 = world.registry.accept(world.now, addr("[2001:db8:1:2::1]:1"));
    assert!(v6.is_ok());
    for host in 2..=10 {
        world.accept(addr(&format!("[2001:db8:1:{host}::1]:1")));
    }
    let refused = world.registry.accept(world.now, addr("[2001:db8:1:ff::1]:1")).unwrap_err();
    assert_eq!(refused.to_string(), "too many pending handshakes from 2001:db8:1::/48 (limit 10)");
    // ...while an honest publisher elsewhere is listed at once.
    let honest = world.publisher("192.0.2.77:27960", "honest");
    assert!(world.listing(NS).contains_key(&honest.address()));
    world.check();
    world.advance(secs(11));
    world.check();
    assert_eq!(world.registry.stats().handshakes, 0, "handshake timeouts release every slot");
    assert!(world.registry.accept(world.now, addr("203.0.113.1:9")).is_ok());
    world.check();
    bystanders.assert_untouched(&mut world);
}

#[test]
fn handshake_timeout() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    let timeout = world.registry.config().handshake_timeout;
    let mut browser = Browser::new(BrowserConfig::new(NS));
    let conn = world.accept(addr("198.51.100.1:1"));
    let deadline = world.now + timeout;
    assert!(world.registry.poll_timeout().is_some_and(|t| t <= deadline));

    // Half a Hello does not count.
    let mut hello = Vec::new();
    let _ = browser.poll_transmit(world.now, &mut hello);
    world.send_raw(conn, &hello[..hello.len() / 2]).unwrap();
    world.advance(timeout - millis(1));
    assert!(world.closed(conn).is_empty());
    world.run_until(deadline, &mut [&mut bystanders.publisher]);
    assert_rejected(&mut world, conn, &mut browser, ErrorCode::HANDSHAKE_TIMEOUT);
    assert_eq!(world.registry.stats().handshakes, 0);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn heartbeat_timeout_removes_the_entry_from_browsers_too() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    let ttl = world.registry.config().entry_ttl;
    // A game server that hangs after its first heartbeat: never pumped again.
    let mut hung = world.publisher("192.0.2.1:27960", "alive");
    let last_seen = world.now;
    world.advance(secs(1));
    let read = world.read(&mut bystanders.browser);
    assert_eq!(read.upserted(), [hung.address()]);

    // The driver follows the timers; only the bystander publisher is pumped.
    world.run_until(last_seen + ttl - millis(1), &mut [&mut bystanders.publisher]);
    assert!(world.closed(hung.conn).is_empty(), "closed before the TTL");
    world.run_until(last_seen + ttl, &mut [&mut bystanders.publisher]);
    assert!(!world.listing(NS).contains_key(&hung.address()));
    assert_rejected(&mut world, hung.conn, &mut hung.publisher, ErrorCode::HEARTBEAT_TIMEOUT);

    world.advance(secs(1));
    let read = world.read(&mut bystanders.browser);
    assert_eq!(read.removed(), [hung.address()]);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn heartbeat_timeout_is_on_time_when_the_ttl_is_shorter_than_the_handshake_timeout() {
    let config = RegistryConfig { entry_ttl: secs(3), handshake_timeout: secs(10), ..RegistryConfig::default() };
    let mut world = World::new(config);
    let mut hung = world.publisher("192.0.2.1:27960", "alive");
    let last_seen = world.now;
    // A driver that sleeps until poll_timeout must wake up by the TTL.
    assert!(
        world.registry.poll_timeout().is_some_and(|t| t <= last_seen + secs(3)),
        "next registry deadline {:?} after the entry's expiry",
        world.registry.poll_timeout().map(|t| t - last_seen)
    );
    world.run_until(last_seen + secs(3), &mut []);
    assert!(!world.listing(NS).contains_key(&hung.address()), "entry outlived its TTL");
    assert_rejected(&mut world, hung.conn, &mut hung.publisher, ErrorCode::HEARTBEAT_TIMEOUT);
}

#[test]
fn replaced_by_a_new_connection_from_the_same_address_without_flicker() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());
    let mut old = world.publisher("192.0.2.1:27960", "old");
    let key = old.address();
    world.advance(secs(1));
    world.read(&mut bystanders.browser);

    // Same IP:port (the game server restarted, or its connection migrated).
    let new = world.publisher("192.0.2.1:27960", "new");
    assert_eq!(new.address(), key);
    assert_eq!(world.listing(NS)[&key].blob, "new");
    assert_rejected(&mut world, old.conn, &mut old.publisher, ErrorCode::REPLACED);
    assert!(world.closed(new.conn).is_empty());
    assert_eq!(world.listing(NS)[&key].blob, "new", "dropping the old connection keeps the entry");
    world.advance(secs(1));
    let read = world.read(&mut bystanders.browser);
    assert_eq!(read.removed(), [] as [SocketAddr; 0], "no flicker");
    assert_eq!(read.upserted(), [key]);
    assert_eq!(&bystanders.browser.browser.server(&key).unwrap().blob[..], b"new");

    // Same IP and the same declared port, from another source port.
    let declared = |port| PublisherConfig { declared_port: Some(port), ..PublisherConfig::new(NS) };
    let mut a = world.publisher_with("192.0.2.2:40000", declared(27960), "a");
    let b = world.publisher_with("192.0.2.2:40001", declared(27960), "b");
    assert_eq!(a.address(), b.address());
    assert_rejected(&mut world, a.conn, &mut a.publisher, ErrorCode::REPLACED);
    world.advance(secs(1));
    let read = world.read(&mut bystanders.browser);
    assert!(read.removed().is_empty(), "no flicker");
    assert_eq!(read.upserted(), [b.address()]);

    // The replacement stays fully functional, and its Goodbye removes the entry.
    let mut b = b;
    world.heartbeat(&mut b, "b2");
    assert_eq!(world.listing(NS)[&b.address()].blob, "b2");
    world.goodbye(&mut b);
    assert!(!world.listing(NS).contains_key(&b.address()));
    bystanders.assert_untouched(&mut world);
}

#[test]
fn replacement_works_at_the_per_ip_and_server_limits() {
    // A game server reconnecting over a dead connection must not be locked
    // out until the old one times out: taking over does not add a publisher.
    let config = RegistryConfig { max_publishers_per_ip: 1, max_publishers: 2, ..RegistryConfig::default() };
    let (mut world, mut bystanders) = with_bystanders(config);
    let mut old = world.publisher("192.0.2.1:27960", "old");
    let new = world.publisher("192.0.2.1:27960", "new");
    assert_rejected(&mut world, old.conn, &mut old.publisher, ErrorCode::REPLACED);
    assert_eq!(world.listing(NS)[&new.address()].blob, "new");
    assert_eq!(world.registry.stats().publishers, 2);
    // Another port on that IP is still over the limit.
    let mut other = Publisher::new(PublisherConfig::new(NS), world.now);
    let (conn, result) = connect(&mut world, "192.0.2.1:27961", &mut other);
    assert_eq!(result.unwrap_err().code(), ErrorCode::IP_LIMIT);
    assert_rejected(&mut world, conn, &mut other, ErrorCode::IP_LIMIT);
    bystanders.assert_untouched(&mut world);
}

#[test]
fn shutdown_closes_everyone_and_refuses_new_connections() {
    let mut world = World::new(RegistryConfig::default());
    let mut p = world.publisher("192.0.2.1:27960", "x");
    let mut q = world.publisher_with("192.0.2.2:27960", PublisherConfig::new("other"), "y");
    let mut b = world.browser("198.51.100.1:1");
    let mut pending = Browser::new(BrowserConfig::new(NS));
    let handshaking = world.accept(addr("198.51.100.2:1"));

    world.registry.shutdown();
    world.collect_events();
    assert_rejected(&mut world, p.conn, &mut p.publisher, ErrorCode::SHUTTING_DOWN);
    assert_rejected(&mut world, q.conn, &mut q.publisher, ErrorCode::SHUTTING_DOWN);
    assert_rejected(&mut world, b.conn, &mut b.browser, ErrorCode::SHUTTING_DOWN);
    assert_rejected(&mut world, handshaking, &mut pending, ErrorCode::SHUTTING_DOWN);
    let err = world.registry.accept(world.now, addr("192.0.2.3:1")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::SHUTTING_DOWN);
    let stats = world.registry.stats();
    assert_eq!((stats.publishers, stats.browsers, stats.handshakes, stats.namespaces), (0, 0, 0, 0));
    assert_eq!(world.registry.log_nodes(), 0);
    world.check();
}

#[test]
fn protocol_violations() {
    let (mut world, mut bystanders) = with_bystanders(RegistryConfig::default());

    // A heartbeat before Hello.
    let mut publisher = Publisher::new(PublisherConfig::new(NS), world.now);
    let _ = publisher.poll_transmit(world.now, &mut Vec::new());
    let conn = world.accept(addr("192.0.2.1:27960"));
    let err = world.send_raw(conn, &encode(&Frame::Heartbeat { blob: b"early" })).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    assert_rejected(&mut world, conn, &mut publisher, ErrorCode::PROTOCOL_VIOLATION);

    // A browser sending a Heartbeat.
    let mut b = world.browser("198.51.100.1:1");
    let err = world.send_raw(b.conn, &encode(&Frame::Heartbeat { blob: b"not yours" })).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    assert!(!world.listing(NS).contains_key(&b.peer));
    assert_rejected(&mut world, b.conn, &mut b.browser, ErrorCode::PROTOCOL_VIOLATION);

    // A second Hello, which also must not move the publisher elsewhere.
    let mut p = world.publisher("192.0.2.2:27960", "p");
    let err = world.send_raw(p.conn, &hello_bytes(PROTOCOL_VERSION, Role::Browser, "other", b"")).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    assert!(!world.listing(NS).contains_key(&p.address()), "the violator's own entry goes");
    assert_eq!(world.registry.stats().namespaces, 1);
    assert_rejected(&mut world, p.conn, &mut p.publisher, ErrorCode::PROTOCOL_VIOLATION);

    // A malformed frame (Hello with an unknown role).
    let mut publisher = Publisher::new(PublisherConfig::new(NS), world.now);
    let _ = publisher.poll_transmit(world.now, &mut Vec::new());
    let conn = world.accept(addr("192.0.2.3:27960"));
    let err = world.send_raw(conn, &[0x01, 0x02, 0x01, 0x07]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    assert_rejected(&mut world, conn, &mut publisher, ErrorCode::PROTOCOL_VIOLATION);

    // Unknown frame types are skipped, not violations.
    let mut ok = world.publisher("192.0.2.4:27960", "ok");
    world.send_raw(ok.conn, &encode(&Frame::Unknown { frame_type: 0x3f, payload: b"future" })).unwrap();
    world.advance(secs(1));
    world.heartbeat(&mut ok, "still ok");
    assert_eq!(world.listing(NS)[&ok.address()].blob, "still ok");
    bystanders.assert_untouched(&mut world);
}

// ---------------------------------------------------------------------------
// Goodbye, addresses, refresh
// ---------------------------------------------------------------------------

#[test]
fn goodbye_removes_the_entry_at_once_and_closes_with_no_error() {
    let mut world = World::new(RegistryConfig::default());
    let mut p = world.publisher("192.0.2.1:27960", "x");
    let stays = world.publisher("192.0.2.2:27960", "y");
    let mut b = world.browser("198.51.100.1:1");
    assert_eq!(b.browser.servers().len(), 2);

    p.publisher.shutdown(world.now);
    let mut wire = Vec::new();
    assert!(p.publisher.poll_transmit(world.now, &mut wire));
    assert_eq!(decode_all(&wire), [Wire::Goodbye]);
    assert!(p.publisher.is_closed());
    world.send_raw(p.conn, &wire).unwrap();
    assert_eq!(world.closed(p.conn), [(ErrorCode::NO_ERROR, "goodbye".to_owned())]);
    // Immediately, not after a TTL.
    assert!(!world.listing(NS).contains_key(&p.address()));
    // A graceful close sends no Reject.
    let mut out = Vec::new();
    assert!(!world.registry.poll_transmit(p.conn, world.now, &mut out));
    world.registry.remove(p.conn);
    world.check();

    world.advance(world.registry.config().update_interval);
    let read = world.read(&mut b);
    assert_eq!(read.removed(), [p.address()]);
    assert_eq!(read.upsert_count(), 0);
    assert_eq!(b.browser.servers().map(|s| s.address).collect::<Vec<_>>(), [stays.address()]);
    assert_same_list(&world, &b.browser);

    // A browser's Goodbye closes it with NO_ERROR too.
    b.browser.shutdown(world.now);
    world.upload(b.conn, &mut b.browser).unwrap();
    assert_eq!(world.closed(b.conn), [(ErrorCode::NO_ERROR, "goodbye".to_owned())]);
    world.registry.remove(b.conn);
    assert_eq!(world.registry.stats().browsers, 0);
    world.check();
}

#[test]
fn a_declared_port_replaces_the_observed_one_and_is_flagged() {
    let mut world = World::new(RegistryConfig::default());
    let config = PublisherConfig { declared_port: Some(27960), ..PublisherConfig::new(NS) };
    let declared = world.publisher_with("192.0.2.1:40000", config, "declared");
    let observed = world.publisher("192.0.2.2:27961", "observed");
    let mut b = world.browser("198.51.100.1:1");

    let info = declared.publisher.welcome().unwrap().publisher.unwrap();
    assert_eq!(info.address, addr("192.0.2.1:27960"));
    assert!(info.port_declared);
    let listing = world.listing(NS);
    assert!(listing[&addr("192.0.2.1:27960")].port_declared);
    assert!(!listing.contains_key(&addr("192.0.2.1:40000")));
    assert_eq!(observed.address(), addr("192.0.2.2:27961"));
    assert!(!listing[&addr("192.0.2.2:27961")].port_declared);

    let seen = b.browser.server(&addr("192.0.2.1:27960")).unwrap();
    assert!(seen.port_declared);
    assert_eq!(&seen.blob[..], b"declared");
    assert!(!b.browser.server(&addr("192.0.2.2:27961")).unwrap().port_declared);
    assert!(world.events.iter().any(|e| matches!(e,
        metaserve_proto::Event::Accepted { connection, address, .. }
            if *connection == declared.conn && *address == addr("192.0.2.1:27960"))));
    assert_same_list(&world, &b.browser);
    world.advance(secs(1));
    assert!(world.read(&mut b).frames.is_empty());
}

#[test]
fn ipv4_mapped_ipv6_peers_are_normalized() {
    let mut world = World::new(RegistryConfig { max_publishers_per_ip: 1, ..RegistryConfig::default() });
    let mut mapped = world.publisher("[::ffff:192.0.2.9]:5000", "mapped");
    let plain = addr("192.0.2.9:5000");
    assert_eq!(mapped.address(), plain);
    assert!(mapped.address().is_ipv4());
    assert!(world.listing(NS).contains_key(&plain));
    let b = world.browser("[::ffff:198.51.100.1]:1");
    assert_eq!(b.browser.servers().map(|s| s.address).collect::<Vec<_>>(), [plain]);
    assert!(world.events.iter().any(|e| matches!(e,
        metaserve_proto::Event::Accepted { connection, address, .. }
            if *connection == b.conn && *address == addr("198.51.100.1:1"))));

    // The same host over plain IPv4 is the same publisher: it takes over.
    let mut v4 = world.publisher("192.0.2.9:5000", "plain");
    assert_rejected(&mut world, mapped.conn, &mut mapped.publisher, ErrorCode::REPLACED);
    // ... and counts against the same per-IP limit (1) as the mapped form.
    let mut another = Publisher::new(PublisherConfig::new(NS), world.now);
    let (conn, result) = connect(&mut world, "[::ffff:192.0.2.9]:5001", &mut another);
    assert_eq!(result.unwrap_err().code(), ErrorCode::IP_LIMIT);
    assert_rejected(&mut world, conn, &mut another, ErrorCode::IP_LIMIT);
    world.advance(secs(1));
    world.heartbeat(&mut v4, "plain2");
    assert_eq!(world.listing(NS)[&plain].blob, "plain2");
    world.check();
}

#[test]
fn a_publisher_without_news_refreshes_its_entry_before_the_ttl() {
    let mut world = World::new(RegistryConfig::default());
    let ttl = world.registry.config().entry_ttl;
    let mut p = world.publisher("192.0.2.1:27960", "same old");
    let mut b = world.browser("198.51.100.1:1");
    let revision = world.listing(NS)[&p.address()].revision;
    let unchanged_before = world.registry.stats().heartbeats_unchanged;

    let due = p.publisher.poll_timeout().expect("a refresh is scheduled");
    assert!(due < world.now + ttl, "refresh at {:?}, TTL {ttl:?}", due - world.now);

    // Ten TTLs, the driver sleeping until the next deadline each time.
    let end = world.now + ttl * 10;
    world.run_until(end, &mut [&mut p]);
    assert!(world.closed(p.conn).is_empty(), "{:?}", world.closed(p.conn));
    let entry = &world.listing(NS)[&p.address()];
    assert_eq!(&entry.blob[..], b"same old");
    assert_eq!(entry.revision, revision, "refreshes are not changes");
    let refreshes = world.registry.stats().heartbeats_unchanged - unchanged_before;
    assert!((10 * 3..=10 * 3 + 1).contains(&refreshes), "{refreshes} refreshes in ten TTLs");

    // Browsers are not bothered by refreshes.
    let read = world.read(&mut b);
    assert!(read.frames.is_empty(), "{:?}", read.frames);
    world.check();
}

// ---------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------

mod arbitrary {
    use super::*;
    use metaserve_proto::Stats;
    use proptest::prelude::*;

    /// A piece of a byte stream: either noise, or a frame that decodes
    /// (with arbitrary field values), so that deeper states are reached.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let addr = prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
        .boxed();
        let namespace = prop_oneof![Just(NS.to_owned()), Just("other".to_owned()), ".{0,8}"];
        let bytes = || prop::collection::vec(any::<u8>(), 0..24);
        let rev = || prop_oneof![0..32u64, any::<u64>()];
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..48),
            1 => (0..16u64, bytes()).prop_map(|(t, payload)| {
                let mut out = Vec::new();
                metaserve_proto::varint::put(&mut out, t);
                metaserve_proto::varint::put(&mut out, payload.len() as u64);
                out.extend_from_slice(&payload);
                out
            }),
            1 => (0..3u64, any::<bool>(), namespace, bytes(), any::<Option<u16>>(), any::<Option<(u64, u64)>>())
                .prop_map(|(version, browser, namespace, token, declared_port, resume)| encode(&Frame::Hello(Hello {
                    version,
                    role: if browser { Role::Browser } else { Role::Publisher },
                    namespace: &namespace,
                    token: &token,
                    declared_port,
                    resume: resume.map(|(epoch, cursor)| Resume { epoch, cursor }),
                }))),
            2 => prop::collection::vec(any::<u8>(), 0..80).prop_map(|blob| encode(&Frame::Heartbeat { blob: &blob })),
            1 => Just(encode(&Frame::Goodbye)),
            2 => (rev(), addr.clone(), any::<bool>(), bytes()).prop_map(|(revision, address, port_declared, blob)| {
                encode(&Frame::Upsert(Upsert { revision, address, port_declared, blob: &blob }))
            }),
            1 => (rev(), addr).prop_map(|(revision, address)| encode(&Frame::Remove { revision, address })),
            1 => rev().prop_map(|revision| encode(&Frame::Synced { revision })),
            1 => Just(encode(&Frame::Reset)),
            1 => (any::<u64>(), ".{0,8}").prop_map(|(code, reason)| {
                encode(&Frame::Reject(metaserve_proto::frame::Reject { code: ErrorCode(code), reason: &reason }))
            }),
            1 => any::<bool>().prop_map(|publisher| encode(&Frame::Welcome(welcome(publisher)))),
        ]
    }

    /// A stream of pieces, and the points at which it is cut into reads.
    fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        (prop::collection::vec(piece(), 0..8), prop::collection::vec(any::<usize>(), 0..8)).prop_map(
            |(pieces, cuts)| {
                let bytes = pieces.concat();
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
                cuts.sort_unstable();
                (bytes, cuts)
            },
        )
    }

    fn chunks<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            out.push(&bytes[start..cut]);
            start = cut;
        }
        out
    }

    fn welcome(publisher: bool) -> Welcome {
        Welcome {
            version: 1,
            epoch: 7,
            max_blob_size: 64,
            heartbeat_interval: secs(1),
            update_interval: secs(1),
            entry_ttl: secs(30),
            publisher: publisher.then(|| metaserve_proto::frame::PublisherInfo {
                id: 1,
                address: addr("192.0.2.1:1"),
                port_declared: false,
            }),
        }
    }

    /// The counts that describe which resources are held.
    fn held(stats: Stats) -> (usize, usize, usize, usize, usize, usize) {
        (stats.publishers, stats.browsers, stats.handshakes, stats.namespaces, stats.entries, stats.ghosts)
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Publisher i publishes a new blob (joining first if it is gone).
        Change(usize),
        /// Publisher i leaves: Goodbye, or the connection just drops.
        Leave(usize, bool),
        /// Browser i's stream takes one write.
        Chunk(usize),
        /// Browser i's stream takes everything.
        Drain(usize),
        /// Browser i's connection drops; it reconnects with its resume point.
        Reconnect(usize),
        /// Time passes.
        Wait(u64),
    }

    const SIM_PUBLISHERS: usize = 12;
    const SIM_BROWSERS: usize = 3;
    const SIM_TOMBSTONES: usize = 3;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..SIM_PUBLISHERS).prop_map(Op::Change),
            2 => (0..SIM_PUBLISHERS, any::<bool>()).prop_map(|(i, g)| Op::Leave(i, g)),
            3 => (0..SIM_BROWSERS).prop_map(Op::Chunk),
            1 => (0..SIM_BROWSERS).prop_map(Op::Drain),
            1 => (0..SIM_BROWSERS).prop_map(Op::Reconnect),
            2 => (0..30u64).prop_map(Op::Wait),
        ]
    }

    /// Feeds one `poll_transmit` of a browser's connection to the browser.
    fn transmit_once(world: &mut World, b: &mut Brw) -> bool {
        let mut out = Vec::new();
        let wrote = world.registry.poll_transmit(b.conn, world.now, &mut out);
        b.browser.handle_input(world.now, &out).expect("browser accepts registry output");
        while b.browser.poll_event().is_some() {}
        // A batch runs to the log's head, so an entry that changes while a
        // batch is under way is sent again later in that batch; within one
        // transmit, though, the log cannot change: every entry at most once.
        let mut this_transmit = HashSet::new();
        for frame in decode_all(&out) {
            match frame {
                Wire::Upsert { address, .. } | Wire::Remove { address, .. } => {
                    assert!(this_transmit.insert(address), "{address} sent twice in one transmit");
                }
                Wire::Reset => this_transmit.clear(),
                // Synced(R): the list equals the namespace at R, which is now.
                Wire::Synced(_) => assert_same_list(world, &b.browser),
                _ => {}
            }
        }
        wrote
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Publishers come, change and go while browsers read in small
        /// chunks, fall behind and reconnect. Whatever happened, a browser
        /// that finally reads everything lists exactly the registry's entries,
        /// and the log stays within its bound.
        #[test]
        fn browsers_converge_under_churn_partial_reads_and_reconnects(ops in prop::collection::vec(op(), 1..120)) {
            let config = RegistryConfig {
                heartbeat_interval: millis(1),
                update_interval: millis(10),
                max_tombstones: SIM_TOMBSTONES,
                transmit_chunk: 60,
                ..RegistryConfig::default()
            };
            let mut world = World::new(config);
            let peer = |i: usize| format!("192.0.2.{}:{}", i / 3 + 1, 27960 + i % 3);
            let mut pubs: Vec<Option<Pub>> = (0..SIM_PUBLISHERS).map(|_| None).collect();
            let mut browsers: Vec<Brw> = (0..SIM_BROWSERS)
                .map(|i| {
                    let peer = addr(&format!("198.51.100.{}:1", i + 1));
                    let mut b = Brw { browser: Browser::new(BrowserConfig::new(NS)), conn: world.accept(peer), peer };
                    world.upload(b.conn, &mut b.browser).unwrap();
                    b
                })
                .collect();
            for (version, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Change(i) => match &mut pubs[i] {
                        Some(p) => {
                            world.advance(millis(1));
                            world.heartbeat(p, &format!("v{version}"));
                        }
                        None => pubs[i] = Some(world.publisher(&peer(i), &format!("v{version}"))),
                    },
                    Op::Leave(i, graceful) => {
                        if let Some(mut p) = pubs[i].take() {
                            if graceful {
                                world.goodbye(&mut p);
                            } else {
                                world.registry.remove(p.conn);
                            }
                        }
                    }
                    Op::Chunk(i) => {
                        transmit_once(&mut world, &mut browsers[i]);
                    }
                    Op::Drain(i) => while transmit_once(&mut world, &mut browsers[i]) {},
                    Op::Reconnect(i) => {
                        let b = &mut browsers[i];
                        world.registry.remove(b.conn);
                        b.browser = std::mem::replace(&mut b.browser, Browser::new(BrowserConfig::new(NS))).reconnect();
                        b.conn = world.accept(b.peer);
                        world.upload(b.conn, &mut b.browser).unwrap();
                    }
                    Op::Wait(ms) => world.advance(millis(ms)),
                }
                world.check();
                let stats = world.registry.stats();
                prop_assert!(stats.tombstones <= SIM_TOMBSTONES);
                prop_assert!(stats.ghosts <= stats.browsers);
                prop_assert!(world.registry.log_nodes() <= stats.entries + SIM_TOMBSTONES + stats.browsers);
            }
            // Everyone reads everything: the batch in progress, then the rest.
            for _ in 0..2 {
                world.advance(millis(10));
                for b in &mut browsers {
                    while transmit_once(&mut world, b) {}
                }
            }
            for b in &browsers {
                prop_assert!(b.browser.is_synced());
                prop_assert_eq!(list(&b.browser), world.listing(NS));
            }
            world.check();
        }

        #[test]
        fn the_registry_survives_arbitrary_bytes(
            hello in 0..3u8,
            (bytes, cuts) in stream(),
            steps in prop::collection::vec(0..2_000u64, 8),
        ) {
            let config = RegistryConfig {
                max_blob_size: 64,
                max_tombstones: 4,
                max_namespaces: 2,
                handshake_timeout: secs(5),
                entry_ttl: secs(6),
                ..RegistryConfig::default()
            };
            let (mut world, mut bystanders) = with_bystanders(config);
            let baseline = held(world.registry.stats());
            let conn = world.accept(addr("203.0.113.1:4000"));
            // Before a Hello, or after a valid one as publisher or browser.
            let prefix = match hello {
                0 => Vec::new(),
                1 => hello_bytes(PROTOCOL_VERSION, Role::Publisher, NS, b""),
                _ => hello_bytes(PROTOCOL_VERSION, Role::Browser, NS, b""),
            };
            if !prefix.is_empty() {
                world.send_raw(conn, &prefix).unwrap();
            }
            let mut error = None;
            let mut welcomed = false;
            for (i, chunk) in chunks(&bytes, &cuts).into_iter().enumerate() {
                let result = world.send_raw(conn, chunk);
                world.check();
                if error.is_some() {
                    prop_assert!(result.is_ok(), "input after an error is ignored");
                } else if let Err(e) = result {
                    let closed = world.closed(conn);
                    prop_assert_eq!(closed.len(), 1);
                    prop_assert_eq!(closed[0].0, e.code());
                    prop_assert_eq!(&closed[0].1, &e.to_string());
                    error = Some(e);
                }
                if !world.closed(conn).is_empty() {
                    // Closing: what it held is released at once.
                    prop_assert_eq!(held(world.registry.stats()), baseline);
                    prop_assert_eq!(world.registry.poll_connection_timeout(conn), None);
                }
                let listing = world.listing(NS);
                prop_assert_eq!(listing.get(&bystanders.entry.address), Some(&bystanders.entry));
                // Time passes between reads; the bystander publisher keeps up.
                world.advance(millis(steps[i % steps.len()]));
                world.pump(&mut bystanders.publisher);
                let mut out = Vec::new();
                while world.registry.poll_transmit(conn, world.now, &mut out) {}
                let frames = decode_all(&out); // whatever it sends is well-formed
                if let Some(e) = &error {
                    // A Welcome that was due when the session ended comes first;
                    // nothing else but the Reject follows an error.
                    let due = !welcomed && matches!(frames.first(), Some(Wire::Welcome(_)));
                    let data = frames.iter().skip(usize::from(due)).any(|f| matches!(f, Wire::Upsert { .. } | Wire::Welcome(_)));
                    prop_assert!(!data, "data sent after the error: {:?}", frames);
                    if let Some(Wire::Reject(code, _)) = frames.last() {
                        prop_assert_eq!(*code, e.code());
                    }
                }
                welcomed |= frames.iter().any(|f| matches!(f, Wire::Welcome(_)));
            }
            if let Some(e) = &error {
                let closed = world.closed(conn);
                prop_assert_eq!(closed.len(), 1);
                prop_assert_eq!(closed[0].0, e.code());
            }
            // The bystander browser still decodes everything and agrees with the registry.
            world.advance(secs(1));
            world.read(&mut bystanders.browser);
            assert_same_list(&world, &bystanders.browser.browser);
            world.registry.remove(conn);
            world.check();
            // The bystander browser may now pin a node that the removal moved
            // (a ghost, at most one per browser); everything else is as before.
            let (p, b, h, n, e, _) = held(world.registry.stats());
            prop_assert_eq!((p, b, h, n, e, 0), (baseline.0, baseline.1, baseline.2, baseline.3, baseline.4, 0));
            prop_assert!(world.registry.stats().ghosts <= 1);
            let stats = world.registry.stats();
            prop_assert_eq!(world.registry.log_nodes(), stats.entries + stats.tombstones + stats.ghosts);
            prop_assert!(stats.tombstones <= 4);
        }

        #[test]
        fn a_publisher_survives_arbitrary_bytes(welcomed in any::<bool>(), (bytes, cuts) in stream()) {
            let now = std::time::Instant::now();
            let mut publisher = Publisher::new(PublisherConfig::new(NS), now);
            publisher.set_heartbeat("x".into(), now).unwrap();
            let _ = publisher.poll_transmit(now, &mut Vec::new());
            if welcomed {
                publisher.handle_input(now, &encode(&Frame::Welcome(welcome(true)))).unwrap();
                prop_assert!(matches!(publisher.poll_event(), Some(PublisherEvent::Accepted(_))));
            }
            let mut failed = false;
            for (i, chunk) in chunks(&bytes, &cuts).into_iter().enumerate() {
                let at = now + secs(i as u64);
                let result = publisher.handle_input(at, chunk);
                if failed {
                    prop_assert!(result.is_ok());
                }
                if result.is_err() {
                    failed = true;
                    prop_assert!(publisher.is_closed());
                }
                while publisher.poll_event().is_some() {}
                let _ = publisher.set_heartbeat(vec![0; i * 10].into(), at);
                let _ = publisher.poll_timeout();
                publisher.handle_timeout(at);
                let mut out = Vec::new();
                while publisher.poll_transmit(at, &mut out) {
                    prop_assert!(out.len() < 1 << 16);
                }
                decode_all(&out);
            }
            publisher.shutdown(now);
            let _ = publisher.poll_transmit(now, &mut Vec::new());
            prop_assert!(publisher.is_closed());
        }

        #[test]
        fn a_browser_survives_arbitrary_bytes(welcomed in any::<bool>(), (bytes, cuts) in stream()) {
            let now = std::time::Instant::now();
            let mut browser = Browser::new(BrowserConfig { max_entries: 4, ..BrowserConfig::new(NS) });
            let _ = browser.poll_transmit(now, &mut Vec::new());
            if welcomed {
                browser.handle_input(now, &encode(&Frame::Welcome(welcome(false)))).unwrap();
            }
            let mut failed = false;
            for chunk in chunks(&bytes, &cuts) {
                let result = browser.handle_input(now, chunk);
                if failed {
                    prop_assert!(result.is_ok());
                }
                if let Err(e) = result {
                    failed = true;
                    prop_assert!(browser.is_closed());
                    prop_assert!(!browser.is_synced());
                    let _ = e.code();
                }
                prop_assert!(browser.servers().len() <= 4);
                while browser.poll_event().is_some() {}
                let _ = browser.resume_point();
                let mut out = Vec::new();
                let _ = browser.poll_transmit(now, &mut out);
                decode_all(&out);
            }
            if !failed {
                // A well-behaved reconnect keeps what was listed.
                let count = browser.servers().len();
                let resumed = browser.resume_point().is_some();
                let next = browser.reconnect();
                prop_assert_eq!(next.servers().len(), if resumed { count } else { 0 });
            }
        }
    }
}

/// A finished session stream (QUIC FIN) between frames ends the session
/// gracefully and removes the publisher's entry; one that ends inside a
/// frame is a protocol violation.
#[test]
fn a_finished_stream_ends_the_session_gracefully_unless_it_cuts_a_frame() {
    let mut world = World::new(RegistryConfig::default());
    let publisher = world.publisher("192.0.2.1:27960", "up");
    assert_eq!(world.registry.servers(NS).count(), 1);
    world.registry.handle_finish(publisher.conn).unwrap();
    assert_eq!(world.registry.servers(NS).count(), 0);
    match world.registry.poll_event() {
        Some(metaserve_proto::Event::Closed { code, reason, .. }) => {
            assert_eq!((code, reason.as_str()), (ErrorCode::NO_ERROR, "session stream finished"))
        }
        other => panic!("expected a graceful close, got {other:?}"),
    }

    let conn = world.registry.accept(world.now, addr("192.0.2.2:1")).unwrap();
    let mut hello = Vec::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Browser,
        namespace: NS,
        token: b"",
        declared_port: None,
        resume: None,
    })
    .encode(&mut hello);
    world.registry.handle_input(conn, world.now, &hello[..4]).unwrap();
    let err = world.registry.handle_finish(conn).unwrap_err();
    assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    assert!(matches!(
        world.registry.poll_event(),
        Some(metaserve_proto::Event::Closed { code: ErrorCode::PROTOCOL_VIOLATION, .. })
    ));
    assert_eq!(world.registry.stats().handshakes, 0);
    world.registry.check_invariants().unwrap();
}
