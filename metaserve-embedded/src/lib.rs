//! metaserve without an async runtime: the sans-IO state machines of
//! [`metaserve_proto`] and the sans-IO QUIC of [`quinn_proto`], driven by a
//! plain loop on a blocking [`std::net::UdpSocket`].
//!
//! No tokio, no async-std, no futures executor, no threads of its own: this
//! is what a game engine with its own frame loop copies. [`QuicSession`] is
//! one quinn-proto `Endpoint` with one `Connection` and its one session
//! stream; each [`QuicSession::step`] transmits what is due, waits for the
//! socket until the earliest deadline (QUIC's and the state machine's), and
//! feeds what arrived to the state machine. The caller drains the state
//! machine's events after each step:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::{Duration, Instant};
//! use metaserve_embedded::{tls, QuicSession};
//! use metaserve_proto::{Publisher, PublisherConfig, PublisherEvent};
//!
//! let config = tls::client_config_pinned("3A:F1:...".parse()?)?;
//! let mut session = QuicSession::connect("127.0.0.1:27950".parse()?, "localhost", config)?;
//! let mut publisher = Publisher::new(PublisherConfig::new("demo"), Instant::now());
//! publisher.set_heartbeat("players=0".into(), Instant::now())?;
//! let next_frame = Instant::now() + Duration::from_millis(16);
//! session.step(&mut publisher, Some(next_frame))?;
//! while let Some(event) = publisher.poll_event() {
//!     if let PublisherEvent::Accepted(welcome) = event {
//!         println!("listed as {:?}", welcome.publisher.map(|p| p.address));
//!     }
//! }
//! // ... one step per frame; at the end:
//! session.goodbye(&mut publisher, Duration::from_secs(2))?;
//! # Ok(())
//! # }
//! ```
//!
//! The examples `embedded-publisher` and `embedded-browser`
//! (`examples/publisher.rs`, `examples/browser.rs`) run against a real meta
//! server; `docs/EMBEDDING.md` explains the order of calls.
//!
//! [`tls`] is `metaserve_quinn::tls` without its `driver` feature: the same
//! quinn-proto configurations (ALPN `metaserve/1`, keep-alives, pinned
//! fingerprints, CA files) as the async drivers, built on quinn-proto and
//! rustls alone, so nothing here depends on `quinn` and its `tokio` dependency.

#![forbid(unsafe_code)]

mod session;

/// TLS and transport configurations; see `metaserve_quinn::tls`.
pub use metaserve_quinn::tls;

/// The sans-IO state machines this crate drives.
pub use metaserve_proto;
/// The client roles' common shape, which [`QuicSession`] drives.
pub use metaserve_proto::ClientRole;
/// The sans-IO QUIC this crate drives, for its error and statistics types.
pub use quinn_proto;
pub use session::{QuicSession, SessionError};
