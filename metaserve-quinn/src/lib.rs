//! The runtime-agnostic quinn driver of metaserve: the one driver loop
//! behind `metaserve-tokio` and `metaserve-async-std`.
//!
//! Every function that needs a runtime takes the quinn
//! [`Runtime`](quinn::Runtime) to use for timers and tasks as its first
//! argument, `Arc<dyn quinn::Runtime>`, as quinn's `Endpoint::new` does.
//! Game developers normally use a runtime crate instead: it re-exports all
//! of this crate and adds the same functions with its runtime passed for
//! them (and `runtime()`, that runtime as a value). The types are this
//! crate's whichever runtime made them, so code that picks its runtime at
//! run time calls the functions here. With the `smol` feature, the `smol`
//! module is such a runtime layer for smol (`quinn::SmolRuntime`).
//!
//! Besides one session per connection ([`publish`], [`browse`]), it has
//! optional reconnect helpers: [`Reconnect`] connects with [`Backoff`] and
//! keeps a publisher listed, or a browser's list current (resumed where
//! possible), across lost connections; [`ClientError::is_transient`] decides
//! what is worth retrying.
//!
//! The loops are written against quinn's poll-level stream API
//! (`RecvStream::poll_read`, `SendStream::poll_write`) inside one `poll_fn`
//! per session: output is pulled from the state machine only once the
//! stream has accepted everything before it, and nothing is ever dropped
//! half-written, as `write_all` inside a `select!` would.

#![forbid(unsafe_code)]

#[cfg(feature = "driver")]
mod admission;
#[cfg(feature = "driver")]
#[doc(hidden)]
pub mod bindings;
#[cfg(feature = "driver")]
mod client;
#[cfg(feature = "driver")]
mod io;
#[cfg(feature = "driver")]
mod reconnect;
#[cfg(feature = "driver")]
mod server;
#[cfg(feature = "smol")]
pub mod smol;
#[cfg(feature = "driver")]
mod throttle;
pub mod tls;

#[cfg(feature = "driver")]
pub use admission::ConnectionLimits;
#[cfg(feature = "driver")]
pub use client::{browse, browse_with, publish, Browse, BrowseOptions, ClientError, PublishOptions};
pub use metaserve_proto::{
    Ban, BanTarget, Browser, BrowserEvent, CodeCounts, Counters, EntryInfo, ErrorCode, NamespaceInfo, RegistryConfig,
    Resume, Server, Stats, Welcome, ALPN,
};
#[cfg(feature = "driver")]
pub use reconnect::{Backoff, Delays, Reconnect, ReconnectEvent, ReconnectingBrowse, Retry};
#[cfg(feature = "driver")]
pub use server::{
    client_endpoint, server_endpoint, server_endpoint_with, udp_socket, MetaServer, MetaServerHandle, SocketBuffers,
    Traffic, CLOSE_LINGER, UDP_BUFFER,
};
