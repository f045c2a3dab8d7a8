//! Sans-IO core of [metaserve](https://github.com/metaserve/metaserve), a
//! QUIC master server for multiplayer games: the wire protocol and the state
//! machines of its three roles.
//!
//! - [`Publisher`]: a game server publishing its newest heartbeat blob.
//! - [`Browser`]: a game client holding the live list of servers.
//! - [`Registry`]: the meta server, with one session per connection.
//!
//! Nothing here does I/O, reads a clock, spawns or blocks: the caller passes
//! bytes and `now` in and pulls bytes, events and deadlines out. Every role
//! has the same shape:
//!
//! | call | what it does |
//! |---|---|
//! | `handle_input(now, bytes)` | feed bytes read from the stream, cut anywhere |
//! | `handle_timeout(now)` | let timers fire |
//! | `poll_timeout()` | when to call `handle_timeout`/`poll_transmit` next |
//! | `poll_transmit(now, &mut buf)` | append due output; call when the stream is writable |
//! | `poll_event()` | what happened |
//!
//! The registry's per-connection calls take a [`ConnectionHandle`] first.
//! The byte-exact protocol is specified in `docs/PROTOCOL.md`.
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
mod config;
mod decoder;
mod error;
pub mod frame;
mod publisher;
mod registry;
pub mod varint;

pub use browser::{Browser, BrowserConfig, BrowserEvent, Server};
pub use config::RegistryConfig;
pub use decoder::{FrameDecoder, DEFAULT_MAX_FRAME_SIZE};
pub use error::{DecodeError, Error, ErrorCode};
pub use frame::{Resume, Role, Welcome, ALPN, PROTOCOL_VERSION};
pub use publisher::{Publisher, PublisherConfig, PublisherEvent};
pub use registry::{
    Ban, BanTarget, BanTargetError, CodeCounts, ConnectionHandle, Counters, EntryInfo, Event, NamespaceInfo, Registry,
    Stats,
};
