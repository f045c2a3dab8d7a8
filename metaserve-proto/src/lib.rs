//! Sans-IO core of [metaserve](https://github.com/metaserve/metaserve), a
//! QUIC master server for multiplayer games: the wire protocol and the state
//! machines of its three roles.
//!
//! - [`Publisher`]: a game server publishing its newest heartbeat blob.
//! - [`Browser`]: a game client holding the live list of servers.
//! - [`Registry`]: the meta server, with one session per connection.
//!
//! Nothing here does I/O, reads a clock, spawns or blocks: the caller passes
//! bytes and `now` in and pulls bytes, events and deadlines out. The
//! byte-exact protocol is specified in `docs/PROTOCOL.md`; how to put a role
//! on a QUIC stack (quinn-proto, an engine's own loop) in `docs/EMBEDDING.md`.
//!
//! # The loop
//!
//! Every role has the same shape (for the client roles also a trait,
//! [`ClientRole`], for drivers that run either):
//!
//! | call | what it does |
//! |---|---|
//! | `handle_input(now, bytes)` | feed bytes read from the stream, cut anywhere |
//! | `handle_timeout(now)` | let timers fire |
//! | `poll_event()` | what happened |
//! | `poll_transmit(now, &mut buf)` | append due output; call when the stream is writable |
//! | `poll_timeout()` | when to call `handle_timeout` and `poll_transmit` next |
//!
//! and one rule: **after every input** (`handle_input`, `handle_timeout`,
//! a mutator such as `set_heartbeat` or `shutdown`, and for the registry
//! `accept`, `set_bans` or `remove`) **drain the output**: `poll_event` until
//! `None`, `poll_transmit` until it returns `false` (or the stream has no
//! room; call it again once it has), then wait until `poll_timeout` or the
//! next input. Output left undrained is not lost, only late: nothing is
//! written from anywhere else. The `poll_*` methods are `#[must_use]`.
//!
//! ## A client role
//!
//! A game client's loop around any ordered byte stream (here a `TcpStream`
//! stands in for the QUIC stream; [`Publisher`] has the same loop, with
//! `set_heartbeat` as its extra input):
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::time::{Duration, Instant};
//! use metaserve_proto::{Browser, BrowserConfig, BrowserEvent};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut stream = std::net::TcpStream::connect("127.0.0.1:9000")?;
//! let mut browser = Browser::new(BrowserConfig::new("quake3"));
//! let (mut out, mut read) = (Vec::new(), [0u8; 4096]);
//! loop {
//!     // 1. Output: everything due, written in order.
//!     while browser.poll_transmit(Instant::now(), &mut out) {}
//!     stream.write_all(&out)?;
//!     out.clear();
//!     // 2. Events: what the last input did.
//!     while let Some(event) = browser.poll_event() {
//!         match event {
//!             BrowserEvent::Synced { revision, .. } => println!("{} servers at {revision}", browser.servers().len()),
//!             BrowserEvent::Rejected { code, reason } => return Err(format!("{code}: {reason}").into()),
//!             _ => {}
//!         }
//!     }
//!     if browser.is_closed() {
//!         return Ok(());
//!     }
//!     // 3. Wait for input or the next deadline (a browser has none).
//!     let wait = browser.poll_timeout().map(|at| at.saturating_duration_since(Instant::now()));
//!     stream.set_read_timeout(wait.map(|d| d.max(Duration::from_millis(1))))?;
//!     match stream.read(&mut read) {
//!         Ok(0) => return Ok(()),
//!         // 4. Input; an error means: close the connection with e.code().
//!         Ok(n) => browser.handle_input(Instant::now(), &read[..n])?,
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => browser.handle_timeout(Instant::now()),
//!         Err(e) => return Err(e.into()),
//!     }
//! }
//! # }
//! ```
//!
//! ## The registry
//!
//! The meta server is one [`Registry`] for all connections; its
//! per-connection calls take a [`ConnectionHandle`] first. A server loop, in
//! the order of its steps (the quinn driver, `metaserve-quinn/src/server.rs`,
//! is this loop on async tasks):
//!
//! ```no_run
//! use std::collections::HashMap;
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use metaserve_proto::{ConnectionHandle, ErrorCode, Event, Registry, RegistryConfig};
//!
//! /// What the transport does for the loop: a QUIC stack, say.
//! trait Transport {
//!     /// The next new connection, or bytes read from one, or a lost one.
//!     fn next(&mut self, until: Option<Instant>) -> Input;
//!     /// From now on, reports the connection from `peer` as `handle`.
//!     fn bind(&mut self, peer: SocketAddr, handle: ConnectionHandle);
//!     /// Writes on the connection's stream; returns how much it took.
//!     fn write(&mut self, connection: ConnectionHandle, bytes: &[u8]) -> usize;
//!     /// Finishes the stream, waits (bounded) for the peer's acknowledgement, closes.
//!     fn finish_and_close(&mut self, connection: ConnectionHandle, code: ErrorCode, reason: &str);
//!     /// Closes at once, without a stream.
//!     fn close(&mut self, peer: SocketAddr, code: ErrorCode, reason: &str);
//! }
//! enum Input { Connected(SocketAddr), Read(ConnectionHandle, Vec<u8>), Lost(ConnectionHandle), Timeout }
//!
//! fn serve(transport: &mut impl Transport) {
//!     let mut registry = Registry::new(RegistryConfig::default(), 1); // epoch: e.g. the start time in ns
//!     let mut open: HashMap<ConnectionHandle, Vec<u8>> = HashMap::new(); // unwritten output
//!     loop {
//!         let now = Instant::now();
//!         // 1. Input.
//!         match transport.next(registry.poll_timeout()) {
//!             Input::Connected(peer) => match registry.accept(now, peer) {
//!                 Ok(handle) => { transport.bind(peer, handle); open.insert(handle, Vec::new()); }
//!                 // Refused before any stream: a bare close.
//!                 Err(e) => transport.close(peer, e.code(), &e.to_string()),
//!             },
//!             // An Err also arrives as Event::Closed: nothing else to do here.
//!             Input::Read(handle, bytes) => { let _ = registry.handle_input(handle, now, &bytes); }
//!             Input::Lost(handle) => { registry.remove(handle); open.remove(&handle); }
//!             Input::Timeout => registry.handle_timeout(now),
//!         }
//!         // 2. Events. Closed sessions keep their final frames (a due
//!         // Welcome, the Reject) for step 3.
//!         while let Some(event) = registry.poll_event() {
//!             if let Event::Accepted { role, namespace, .. } = event {
//!                 println!("{role} in {namespace}");
//!             }
//!         }
//!         // 3. Output, per connection with room in its stream. A browser's
//!         // next batch is due at poll_connection_timeout(handle): include
//!         // those deadlines in the wait of step 1.
//!         for (&handle, pending) in open.iter_mut() {
//!             while pending.is_empty() && registry.poll_transmit(handle, now, pending) {
//!                 let taken = transport.write(handle, pending);
//!                 pending.drain(..taken);
//!             }
//!         }
//!         // 4. Closes: once an ended session's final frames are written, the
//!         // registry names its close (the final-frame contract of Event::Closed).
//!         open.retain(|&handle, pending| match registry.poll_close(handle) {
//!             Some((code, reason)) if pending.is_empty() => {
//!                 transport.finish_and_close(handle, code, reason);
//!                 registry.remove(handle);
//!                 false
//!             }
//!             _ => true,
//!         });
//!     }
//! }
//! ```
//!
//! # Example
//!
//! A publisher, a registry and a browser wired together in memory:
//!
//! ```
//! use std::time::Instant;
//! use metaserve_proto::*;
//!
//! let now = Instant::now();
//! let mut registry = Registry::new(RegistryConfig::default(), 1);
//!
//! let mut publisher = Publisher::new(PublisherConfig::new("example"), now);
//! publisher.set_heartbeat("hello".into(), now)?;
//! let p = registry.accept(now, "192.0.2.1:4000".parse().unwrap())?;
//!
//! let mut browser = Browser::new(BrowserConfig::new("example"));
//! let b = registry.accept(now, "192.0.2.2:5000".parse().unwrap())?;
//!
//! let mut buf = Vec::new();
//! while publisher.poll_transmit(now, &mut buf) {}
//! registry.handle_input(p, now, &buf)?;
//! buf.clear();
//! while registry.poll_transmit(p, now, &mut buf) {}
//! publisher.handle_input(now, &buf)?;
//! assert!(matches!(publisher.poll_event(), Some(PublisherEvent::Accepted(_))));
//!
//! buf.clear();
//! while browser.poll_transmit(now, &mut buf) {}
//! registry.handle_input(b, now, &buf)?;
//! buf.clear();
//! while registry.poll_transmit(b, now, &mut buf) {}
//! browser.handle_input(now, &buf)?;
//! assert!(browser.is_synced());
//! assert_eq!(browser.servers().next().map(|s| &s.blob[..]), Some(&b"hello"[..]));
//! # Ok::<(), Error>(())
//! ```

#![forbid(unsafe_code)]

mod browser;
mod client;
mod config;
mod decoder;
mod error;
pub mod frame;
mod publisher;
mod registry;
pub mod varint;

pub use browser::{Browser, BrowserConfig, BrowserEvent, Server};
pub use client::ClientRole;
pub use config::RegistryConfig;
pub use decoder::{FrameDecoder, DEFAULT_MAX_FRAME_SIZE};
pub use error::{DecodeError, Error, ErrorCode};
pub use frame::{Resume, Role, Welcome, ALPN, PROTOCOL_VERSION};
pub use publisher::{Publisher, PublisherConfig, PublisherEvent};
pub use registry::{
    Ban, BanTarget, BanTargetError, CodeCounts, ConnectionHandle, Counters, EntryInfo, Event, NamespaceInfo, Registry,
    Stats,
};
