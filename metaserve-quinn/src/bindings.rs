//! The runtime layers: `metaserve-tokio`, `metaserve-async-std` and
//! [`smol`](crate::smol), each one [`bind_runtime!`](crate::bind_runtime).
//!
//! Design, and why. This crate is the one implementation, and its
//! runtime-bound entry points take the runtime as a value,
//! `Arc<dyn quinn::Runtime>`, as quinn's own `Endpoint::new` does: code that
//! runs on more than one runtime (the cross-runtime tests, a library
//! supporting several) picks the runtime at run time and calls these, with
//! no dispatch of its own. A runtime crate is then
//!
//! - `pub use metaserve_quinn::*`: everything added here appears there, with
//!   no list to copy and keep in sync (with the `smol` feature on in the same
//!   build, that includes the `smol` module: still smol's layer, harmless);
//! - `bind_runtime!`, which adds `runtime()`, that runtime as such a value,
//!   and the same entry points with it passed (`publish`, `reconnect`,
//!   `meta_server`, the endpoint constructors): each shadows this crate's
//!   function of the same name, whose first argument is the runtime.
//!
//! The macro defines functions only, never types: `metaserve_tokio::MetaServer`
//! *is* [`MetaServer`](crate::MetaServer), so a server, a handle or a
//! [`Reconnect`](crate::Reconnect) made by any runtime crate has the one type
//! generic code names. It stays a macro, rather than the same seven
//! functions written out three times, so that the three layers cannot drift
//! apart: switching runtimes remains switching the crate name.

/// Paths the macro's expansion needs, whatever the calling crate depends on.
#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use futures_core::Stream;
    pub use quinn;
    pub use std::sync::Arc;
}

/// Defines `runtime`, `publish`, `reconnect`, `meta_server`, `server_endpoint`,
/// `server_endpoint_with` and `client_endpoint` bound to one quinn runtime, in
/// the calling module (see the `bindings` module for why):
///
/// ```text
/// pub use metaserve_quinn::*;
/// metaserve_quinn::bind_runtime!(quinn::TokioRuntime, "tokio", "Call it from within a tokio runtime.");
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! bind_runtime {
    ($runtime:expr, $name:literal, $note:literal) => {
        #[doc = concat!(
                    "quinn's ", $name, " runtime, which the other functions here pass for you: pass it yourself to ",
                    "the functions of `metaserve_quinn` (and `MetaServer::new`, `Reconnect::new`) in code that picks ",
                    "its runtime at run time."
                )]
        pub fn runtime() -> $crate::bindings::__private::Arc<dyn $crate::bindings::__private::quinn::Runtime> {
            $crate::bindings::__private::Arc::new($runtime)
        }

        #[doc = concat!(
                    "Publishes `heartbeats` on `connection` until the stream ends, then says Goodbye so the entry ",
                    "disappears at once. Each item replaces the previous one if it was not sent yet, and blobs go ",
                    "out no faster than the server's heartbeat interval. Driven on ", $name, "; see ",
                    "`metaserve_quinn::publish`."
                )]
        pub async fn publish<S>(
            connection: &$crate::bindings::__private::quinn::Connection,
            options: $crate::PublishOptions,
            heartbeats: S,
        ) -> ::core::result::Result<(), $crate::ClientError>
        where
            S: $crate::bindings::__private::Stream<Item = $crate::bindings::__private::Bytes>,
        {
            $crate::publish(runtime(), connection, options, heartbeats).await
        }

        #[doc = concat!(
                    "The meta server at `server`, to (re)connect to from `endpoint` with backoff, driven on ", $name,
                    ": publish across lost connections with `Reconnect::publish`, browse with `Reconnect::browse` ",
                    "(a list that resumes after a reconnect), or just `Reconnect::connect`. `server_name` is the name ",
                    "the server's certificate must carry (unless the endpoint's client configuration pins it). See ",
                    "`metaserve_quinn::Reconnect` for the knobs (backoff, connect timeout, a callback on each retry)."
                )]
        pub fn reconnect(
            endpoint: $crate::bindings::__private::quinn::Endpoint,
            server: ::std::net::SocketAddr,
            server_name: impl ::core::convert::Into<::std::string::String>,
        ) -> $crate::Reconnect {
            $crate::Reconnect::new(runtime(), endpoint, server, server_name)
        }

        #[doc = concat!(
                    "A meta server with `config`, running on ", $name, ": `serve` it an endpoint (see ",
                    "`server_endpoint`), and keep its `handle` for statistics, the live lists, tokens and shutdown. ",
                    "See `metaserve_quinn::MetaServer`. ", $note
                )]
        pub fn meta_server(config: $crate::RegistryConfig) -> $crate::MetaServer {
            $crate::MetaServer::new(runtime(), config)
        }

        #[doc = concat!("Binds a meta server endpoint on `addr`, driven on ", $name, ". ", $note)]
        pub fn server_endpoint(
            addr: ::std::net::SocketAddr,
            config: $crate::bindings::__private::quinn::ServerConfig,
        ) -> ::std::io::Result<$crate::bindings::__private::quinn::Endpoint> {
            $crate::server_endpoint(runtime(), addr, config)
        }

        #[doc = concat!(
                    "Binds a client endpoint on `addr` (port 0 for any) using `config` for its connections, driven on ",
                    $name, ". ", $note
                )]
        pub fn client_endpoint(
            addr: ::std::net::SocketAddr,
            config: $crate::bindings::__private::quinn::ClientConfig,
        ) -> ::std::io::Result<$crate::bindings::__private::quinn::Endpoint> {
            $crate::client_endpoint(runtime(), addr, config)
        }

        #[doc = concat!(
                    "A meta server endpoint on a bound `socket` (see `udp_socket`) with the caller's endpoint ",
                    "configuration, such as `tls::endpoint_config`, whose stateless-reset key survives restarts; ",
                    "driven on ", $name, ". ", $note
                )]
        pub fn server_endpoint_with(
            socket: ::std::net::UdpSocket,
            endpoint: $crate::bindings::__private::quinn::EndpointConfig,
            config: $crate::bindings::__private::quinn::ServerConfig,
        ) -> ::std::io::Result<$crate::bindings::__private::quinn::Endpoint> {
            $crate::server_endpoint_with(runtime(), socket, endpoint, config)
        }
    };
}
