//! metaserve on [smol](https://docs.rs/smol) (feature `smol`): the
//! runtime-bound pieces with quinn's [`SmolRuntime`](quinn::SmolRuntime) passed for you, as
//! `metaserve-tokio` and `metaserve-async-std` do for theirs.
//!
//! Everything else is runtime-agnostic and lives at the crate root:
//! [`browse`](crate::browse), [`tls`](crate::tls), the options, events and
//! errors, and the types: the [`MetaServer`](crate::MetaServer) that
//! [`meta_server`] returns, the [`Reconnect`](crate::Reconnect) that
//! [`reconnect`] returns. Tasks (the endpoint driver, the meta server's
//! connections) run on smol's global executor, `smol::spawn`.
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
//! driver::meta_server(config).serve(endpoint).await;
//! # Ok(()) }
//! ```

crate::bind_runtime!(quinn::SmolRuntime, "smol", "Its tasks run on smol's global executor, `smol::spawn`.");
