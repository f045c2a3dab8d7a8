//! The operator's controls of a running registry: bans (refused at accept,
//! open sessions closed, expiry), live configuration changes, and the
//! counters and entry view that metrics and the HTTP API read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::*;
use metaserve_proto::frame::{Frame, Hello, Role};
use metaserve_proto::{Ban, Error, ErrorCode, PublisherConfig, RegistryConfig, PROTOCOL_VERSION};

fn ban(target: &str, reason: &str) -> Ban {
    Ban::new(target.parse().unwrap(), reason)
}

fn heartbeat(world: &mut World, p: &Pub, blob: &[u8]) -> Result<(), Error> {
    world.send_raw(p.conn, &encode(&Frame::Heartbeat { blob }))
}

#[test]
fn a_ban_refuses_new_connections_and_closes_open_sessions() {
    let mut world = World::new(RegistryConfig::default());
    let cheat = world.publisher("192.0.2.1:4000", "cheat");
    let cheat_browser = world.browser("192.0.2.1:5000");
    let honest = world.publisher("192.0.2.2:4000", "honest");
    let mut b = world.browser("198.51.100.1:5000");
    assert_eq!(b.browser.servers().count(), 2);

    let closed = world.registry.set_bans(world.now, [ban("192.0.2.1", "aimbot")]);
    world.collect_events();
    assert_eq!(closed, 2, "the cheat's publisher and browser sessions");
    let banned = [(ErrorCode::BANNED, "banned: aimbot".to_owned())];
    assert_eq!(world.closed(cheat.conn), banned);
    assert_eq!(world.closed(cheat_browser.conn), banned);
    assert!(world.closed(honest.conn).is_empty());
    assert!(world.closed(b.conn).is_empty());

    // The publisher's entry is gone for browsers at their next update.
    world.advance(secs(1));
    world.read(&mut b);
    let listed: Vec<_> = b.browser.servers().map(|s| s.address).collect();
    assert_eq!(listed, [honest.address()]);
    world.registry.remove(cheat.conn);
    world.registry.remove(cheat_browser.conn);

    // Any port of the banned IP is refused at once, with the reason.
    let refused = world.registry.accept(world.now, addr("192.0.2.1:6000")).unwrap_err();
    assert_eq!(refused, Error::Banned { reason: "aimbot".into() });
    assert_eq!(refused.code(), ErrorCode::BANNED);
    assert_eq!(refused.to_string(), "banned: aimbot");
    // The IPv4-mapped form of the address too.
    assert!(world.registry.accept(world.now, addr("[::ffff:192.0.2.1]:6000")).is_err());

    let counters = world.registry.counters();
    assert_eq!(counters.closed.get(ErrorCode::BANNED), 2);
    assert_eq!(counters.refused.get(ErrorCode::BANNED), 2);
    assert_eq!(world.registry.bans().len(), 1);
    world.check();

    // Lifting the ban lets the address in again.
    assert_eq!(world.registry.set_bans(world.now, []), 0);
    world.publisher("192.0.2.1:4001", "reformed");
    world.check();
}

#[test]
fn networks_and_ports_are_banned_by_their_own_rules() {
    let mut world = World::new(RegistryConfig::default());
    let in_net = world.publisher("203.0.113.77:4000", "in the network");
    let out_of_net = world.publisher("203.0.114.1:4000", "outside");
    let mut declared = PublisherConfig::new(NS);
    declared.declared_port = Some(27960);
    let game = world.publisher_with("198.51.100.9:50000", declared.clone(), "declares 27960");
    let other_port = world.publisher("198.51.100.9:50001", "observed port 50001");
    assert_eq!(game.address(), addr("198.51.100.9:27960"));

    let closed = world
        .registry
        .set_bans(world.now, [ban("203.0.113.0/24", "network"), ban("198.51.100.9:27960", "one game server")]);
    world.collect_events();
    assert_eq!(closed, 2);
    assert_eq!(world.closed(in_net.conn), [(ErrorCode::BANNED, "banned: network".to_owned())]);
    // An IP:port ban covers the entry address browsers see, declared port included.
    assert_eq!(world.closed(game.conn), [(ErrorCode::BANNED, "banned: one game server".to_owned())]);
    assert!(world.closed(out_of_net.conn).is_empty());
    assert!(world.closed(other_port.conn).is_empty());
    world.registry.remove(in_net.conn);
    world.registry.remove(game.conn);

    // A new connection from another port may not declare the banned port...
    let conn = world.accept(addr("198.51.100.9:50002"));
    let hello = |port| {
        encode(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Publisher,
            namespace: NS,
            token: b"",
            declared_port: Some(port),
            resume: None,
        }))
    };
    let err = world.send_raw(conn, &hello(27960)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::BANNED);
    world.registry.remove(conn);
    // ...but any other port.
    let conn = world.accept(addr("198.51.100.9:50003"));
    world.send_raw(conn, &hello(27961)).unwrap();
    world.check();
}

#[test]
fn bans_lapse_at_their_expiry() {
    let mut world = World::new(RegistryConfig::default());
    let until = world.now + secs(10);
    world.registry.set_bans(world.now, [ban("192.0.2.1", "cool down").expires_at(until)]);
    assert!(world.registry.accept(world.now, addr("192.0.2.1:1")).is_err());
    assert!(world.registry.ban_for(world.now, addr("192.0.2.1:1")).is_some());
    world.advance(secs(10));
    assert!(world.registry.ban_for(world.now, addr("192.0.2.1:1")).is_none());
    let p = world.publisher("192.0.2.1:1", "back");

    // Setting a list whose ban already lapsed closes nothing.
    assert_eq!(world.registry.set_bans(world.now, [ban("192.0.2.1", "old").expires_at(until)]), 0);
    world.collect_events();
    assert!(world.closed(p.conn).is_empty());
    world.check();
}

#[test]
fn set_config_applies_to_new_sessions_and_keeps_promises_to_open_ones() {
    let config = RegistryConfig { max_blob_size: 100, entry_ttl: secs(30), ..RegistryConfig::default() };
    let mut world = World::new(config.clone());
    let old = world.publisher("192.0.2.1:1", "old");
    let also_old = world.publisher("192.0.2.1:2", "also old");
    assert_eq!(old.publisher.welcome().unwrap().max_blob_size, 100);

    world.registry.set_config(RegistryConfig {
        max_blob_size: 10,
        entry_ttl: secs(5),
        max_publishers_per_ip: 1,
        ..config
    });
    assert_eq!(world.registry.config().max_blob_size, 10);
    // Lowering a count limit closes nobody; new sessions meet it.
    world.collect_events();
    assert!(world.closed(also_old.conn).is_empty());
    let conn = world.accept(addr("192.0.2.1:3"));
    let hello = encode(&hello_frame(Role::Publisher));
    assert_eq!(world.send_raw(conn, &hello).unwrap_err().code(), ErrorCode::IP_LIMIT);
    world.registry.remove(conn);

    // The open session keeps the blob size and TTL its Welcome promised.
    heartbeat(&mut world, &old, &[b'x'; 50]).unwrap();
    let new = world.publisher("192.0.2.2:1", "new");
    let welcome = new.publisher.welcome().unwrap();
    assert_eq!((welcome.max_blob_size, welcome.entry_ttl), (10, secs(5)));
    assert_eq!(heartbeat(&mut world, &new, &[b'x'; 50]).unwrap_err().code(), ErrorCode::BLOB_TOO_LARGE);

    let late = world.publisher("192.0.2.3:1", "late");
    world.advance(secs(6));
    assert_eq!(world.closed(late.conn)[0].0, ErrorCode::HEARTBEAT_TIMEOUT);
    assert!(world.closed(old.conn).is_empty(), "the old session keeps its 30 s TTL");
    world.advance(secs(25));
    assert_eq!(world.closed(old.conn)[0].0, ErrorCode::HEARTBEAT_TIMEOUT);
    world.check();
}

#[test]
fn a_raised_blob_limit_is_promised_only_to_connections_that_can_take_it() {
    // 1,000-byte blobs; the namespace and token limits keep the frame limit there too.
    let config = RegistryConfig { max_blob_size: 1_000, max_token_len: 16, ..RegistryConfig::default() };
    let mut world = World::new(config.clone());
    // Accepted (and its decoder sized) before the limit is raised; Hello after.
    let early = world.accept(addr("192.0.2.1:1"));
    world.registry.set_config(RegistryConfig { max_blob_size: 5_000, ..config });
    world.send_raw(early, &encode(&hello_frame(Role::Publisher))).unwrap();
    let mut out = Vec::new();
    while world.registry.poll_transmit(early, world.now, &mut out) {}
    let promised = match decode_all(&out).first() {
        Some(Wire::Welcome(w)) => w.max_blob_size,
        other => panic!("expected a Welcome, got {other:?}"),
    };
    // The Welcome promises what this connection's decoder takes, no more...
    assert!((1_000..5_000).contains(&promised), "promised {promised}");
    // ...and keeps that promise: a blob of exactly the promised size is applied.
    blob_raw(&mut world, early, &vec![b'x'; promised as usize]).unwrap();
    assert_eq!(world.registry.servers(NS).count(), 1);

    // A connection accepted after the change is promised, and gets, the new limit.
    let late = world.publisher("192.0.2.2:1", "late");
    assert_eq!(late.publisher.welcome().unwrap().max_blob_size, 5_000);
    heartbeat(&mut world, &late, &[b'y'; 5_000]).unwrap();
    assert_eq!(world.registry.servers(NS).count(), 2);
    world.check();
}

fn blob_raw(world: &mut World, conn: metaserve_proto::ConnectionHandle, blob: &[u8]) -> Result<(), Error> {
    world.send_raw(conn, &encode(&Frame::Heartbeat { blob }))
}

fn hello_frame(role: Role) -> Frame<'static> {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role,
        namespace: NS,
        token: b"",
        declared_port: None,
        resume: None,
    })
}

#[test]
fn counters_and_entries_describe_what_happened() {
    let mut world = World::new(RegistryConfig { max_blob_size: 100, ..RegistryConfig::default() });
    let p = world.publisher("192.0.2.1:1", "v1");
    let published_at = world.now;
    // Nobody has seen v1 yet: replacing it is coalesced.
    world.advance(millis(10));
    heartbeat(&mut world, &p, b"v2").unwrap();
    assert_eq!(world.registry.counters().heartbeats_coalesced, 1);
    let entries: Vec<_> = world.registry.entries(NS).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!((&entries[0].blob[..], entries[0].changed), (&b"v2"[..], published_at + millis(10)));
    assert_eq!(world.registry.namespace_revision(NS), Some(entries[0].revision));
    assert_eq!(world.registry.namespace_revision("nowhere"), None);

    // A browser's snapshot sends one entry; v2 was seen, so v3 is not coalesced.
    let mut b = world.browser("198.51.100.1:1");
    assert_eq!(world.registry.counters().entries_sent, 1);
    world.advance(millis(10));
    heartbeat(&mut world, &p, b"v3").unwrap();
    assert_eq!(world.registry.counters().heartbeats_coalesced, 1);
    // Repeating a blob changes nothing, not even the time of the version.
    world.advance(millis(10));
    heartbeat(&mut world, &p, b"v3").unwrap();
    assert_eq!(world.registry.entries(NS).next().unwrap().changed, published_at + millis(20));
    // v3 was never sent: v4 coalesces it.
    heartbeat(&mut world, &p, b"v4").unwrap();
    assert_eq!(world.registry.counters().heartbeats_coalesced, 2);
    world.advance(secs(1));
    world.read(&mut b);
    assert_eq!(world.registry.counters().entries_sent, 2);
    assert_eq!(world.registry.stats().heartbeats_applied, 4);
    assert_eq!(world.registry.stats().heartbeats_unchanged, 1);

    // Rejected heartbeats are counted by the code they closed the session with.
    assert!(heartbeat(&mut world, &p, &[0; 101]).is_err());
    let rejected = world.registry.counters().heartbeats_rejected;
    assert_eq!(rejected.iter().collect::<Vec<_>>(), [(ErrorCode::BLOB_TOO_LARGE, 1)]);
    let stray = world.accept(addr("192.0.2.9:9"));
    assert_eq!(heartbeat_raw(&mut world, stray).unwrap_err().code(), ErrorCode::PROTOCOL_VIOLATION);
    let counters = world.registry.counters().clone();
    assert_eq!(counters.heartbeats_rejected.get(ErrorCode::PROTOCOL_VIOLATION), 1);
    assert_eq!(counters.closed.get(ErrorCode::BLOB_TOO_LARGE), 1);
    assert_eq!(counters.closed.total(), 2);
    assert_eq!((counters.publishers_accepted, counters.browsers_accepted), (1, 1));
    world.check();
}

fn heartbeat_raw(world: &mut World, conn: metaserve_proto::ConnectionHandle) -> Result<(), Error> {
    world.send_raw(conn, &encode(&Frame::Heartbeat { blob: b"before hello" }))
}
