//! metaserve on [smol](https://docs.rs/smol) (feature `smol`): the
//! runtime-bound pieces with quinn's [`SmolRuntime`] passed for you, as
//! `metaserve-tokio` and `metaserve-async-std` do for theirs.
//!
//! Everything else is runtime-agnostic and lives at the crate root:
//! [`browse`](crate::browse), [`tls`](crate::tls), the options, events and
//! errors. Tasks (the endpoint driver, the meta server's connections) run on
//! smol's global executor, `smol::spawn`.
//!
//! ```no_run
//! # async fn server() -> Result<(), Box<dyn std::error::Error>> {
//! use metaserve_quinn::{smol as driver, tls, RegistryConfig};
//!
//! // Inside `smol::block_on` or a task on any smol executor:
//! let cert = tls::DevCertificate::generate()?;
//! let config = RegistryConfig::default();
//! let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config)?;
//! let endpoint = driver::server_endpoint("[::]:27950".parse()?, server_config)?;
//! driver::MetaServer::new(config).serve(endpoint).await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_core::Stream;
use quinn::{Connection, Endpoint, SmolRuntime};

use crate::{ClientError, MetaServerHandle, PublishOptions, RegistryConfig};

/// Publishes `heartbeats` on `connection` until the stream ends, then says
/// Goodbye; see [`crate::publish`].
pub async fn publish<S>(connection: &Connection, options: PublishOptions, heartbeats: S) -> Result<(), ClientError>
where
    S: Stream<Item = Bytes>,
{
    crate::publish(Arc::new(SmolRuntime), connection, options, heartbeats).await
}

/// A meta server running on smol. See [`crate::MetaServer`].
#[derive(Debug)]
pub struct MetaServer(crate::MetaServer);

impl MetaServer {
    /// A meta server with `config`; its tasks run on smol's global executor.
    pub fn new(config: RegistryConfig) -> Self {
        MetaServer(crate::MetaServer::new(Arc::new(SmolRuntime), config))
    }

    /// A handle for statistics, the live lists, tokens and shutdown.
    pub fn handle(&self) -> MetaServerHandle {
        self.0.handle()
    }

    /// Serves `endpoint` until shutdown; see [`crate::MetaServer::serve`].
    pub async fn serve(&self, endpoint: Endpoint) {
        self.0.serve(endpoint).await
    }
}

/// Binds a meta server endpoint on `addr`, driven on smol.
pub fn server_endpoint(addr: SocketAddr, config: quinn::ServerConfig) -> std::io::Result<Endpoint> {
    crate::server_endpoint(Arc::new(SmolRuntime), addr, config)
}

/// Binds a client endpoint on `addr` (port 0 for any) using `config` for its
/// connections, driven on smol.
pub fn client_endpoint(addr: SocketAddr, config: quinn::ClientConfig) -> std::io::Result<Endpoint> {
    crate::client_endpoint(Arc::new(SmolRuntime), addr, config)
}
