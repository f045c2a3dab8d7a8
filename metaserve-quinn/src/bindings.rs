//! The runtime-bound half of the API — `publish`, `reconnect`, `MetaServer`
//! and the endpoint constructors with a runtime passed for the caller — defined once
//! here and stamped out for each runtime by [`bind_runtime!`](crate::bind_runtime).

/// Paths the macro's expansion needs, whatever the calling crate depends on.
#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use futures_core::Stream;
    pub use quinn;
    pub use std::sync::Arc;
}

/// Defines `publish`, `reconnect`, `MetaServer`, `server_endpoint`, `server_endpoint_with` and `client_endpoint`
/// bound to one quinn runtime, in the calling module. `metaserve-tokio`,
/// `metaserve-async-std` and [`smol`](crate::smol) are each one invocation:
///
/// ```text
/// metaserve_quinn::bind_runtime!(quinn::TokioRuntime, "tokio", "Call it from within a tokio runtime.");
/// ```
#[macro_export]
macro_rules! bind_runtime {
    ($runtime:expr, $name:literal, $note:literal) => {
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
            $crate::publish($crate::bindings::__private::Arc::new($runtime), connection, options, heartbeats).await
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
            $crate::Reconnect::new($crate::bindings::__private::Arc::new($runtime), endpoint, server, server_name)
        }

        #[doc = concat!("A meta server running on ", $name, ". See `metaserve_quinn::MetaServer`.")]
        #[derive(Debug)]
        pub struct MetaServer($crate::MetaServer);

        impl MetaServer {
            #[doc = concat!("A meta server with `config`. ", $note)]
            pub fn new(config: $crate::RegistryConfig) -> Self {
                MetaServer($crate::MetaServer::new($crate::bindings::__private::Arc::new($runtime), config))
            }

            /// A handle for statistics, the live lists, tokens and shutdown.
            pub fn handle(&self) -> $crate::MetaServerHandle {
                self.0.handle()
            }

            /// Serves `endpoint` until `MetaServerHandle::shutdown` or until the
            /// endpoint closes; on shutdown every connection is closed with
            /// `SHUTTING_DOWN`, and this returns once the peers have been told.
            pub async fn serve(&self, endpoint: $crate::bindings::__private::quinn::Endpoint) {
                self.0.serve(endpoint).await
            }
        }

        #[doc = concat!("Binds a meta server endpoint on `addr`, driven on ", $name, ". ", $note)]
        pub fn server_endpoint(
            addr: ::std::net::SocketAddr,
            config: $crate::bindings::__private::quinn::ServerConfig,
        ) -> ::std::io::Result<$crate::bindings::__private::quinn::Endpoint> {
            $crate::server_endpoint($crate::bindings::__private::Arc::new($runtime), addr, config)
        }

        #[doc = concat!(
                    "Binds a client endpoint on `addr` (port 0 for any) using `config` for its connections, driven on ",
                    $name, ". ", $note
                )]
        pub fn client_endpoint(
            addr: ::std::net::SocketAddr,
            config: $crate::bindings::__private::quinn::ClientConfig,
        ) -> ::std::io::Result<$crate::bindings::__private::quinn::Endpoint> {
            $crate::client_endpoint($crate::bindings::__private::Arc::new($runtime), addr, config)
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
            $crate::server_endpoint_with($crate::bindings::__private::Arc::new($runtime), socket, endpoint, config)
        }
    };
}
