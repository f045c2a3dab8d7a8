//! The runtime-agnostic quinn driver of metaserve: the one driver loop
//! behind `metaserve-tokio` and `metaserve-async-std`.
//!
//! Every function takes the quinn [`Runtime`](quinn::Runtime) to use for
//! timers and tasks. Game developers normally use a runtime crate instead,
//! which passes its runtime for them; this crate is for those crates and for
//! anyone bringing their own `quinn::Runtime`. With the `smol` feature, its
//! `smol` module is such a runtime layer for smol (`quinn::SmolRuntime`).
//!
//! The loops are written against quinn's poll-level stream API
//! (`RecvStream::poll_read`, `SendStream::poll_write`) inside one `poll_fn`
//! per session: output is pulled from the state machine only once the
//! stream has accepted everything before it, and nothing is ever dropped
//! half-written, as `write_all` inside a `select!` would.

#![forbid(unsafe_code)]

#[cfg(feature = "driver")]
#[doc(hidden)]
pub mod bindings;
#[cfg(feature = "driver")]
mod client;
#[cfg(feature = "driver")]
mod io;
#[cfg(feature = "driver")]
mod server;
#[cfg(feature = "smol")]
pub mod smol;
pub mod tls;

#[cfg(feature = "driver")]
pub use client::{browse, browse_with, publish, Browse, BrowseOptions, ClientError, PublishOptions};
pub use metaserve_proto::{
    Ban, BanTarget, Browser, BrowserEvent, CodeCounts, Counters, EntryInfo, ErrorCode, NamespaceInfo, RegistryConfig,
    Resume, Server, Stats, Welcome, ALPN,
};
#[cfg(feature = "driver")]
pub use server::{client_endpoint, server_endpoint, MetaServer, MetaServerHandle, Traffic};
