//! The runtime-bound half of the API — `publish`, `MetaServer` and the
//! endpoint constructors with a runtime passed for the caller — defined once
//! here and stamped out for each runtime by [`bind_runtime!`](crate::bind_runtime).

/// Paths the macro's expansion needs, whatever the calling crate depends on.
#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use futures_core::Stream;
    pub use quinn;
    pub use std::sync::Arc;
}

/// Defines `publish`, `MetaServer`, `server_endpoint` and `client_endpoint`
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
    };
}
