//! metaserve on async-std: publish a game server, browse the live list, or
//! embed a complete meta server, over QUIC with [quinn](https://docs.rs/quinn)
//! 0.11 and its `runtime-async-std`.
//!
//! **async-std is discontinued** upstream in favour of
//! [smol](https://docs.rs/smol), and quinn dropped its async-std runtime after
//! 0.11, so this crate keeps quinn on 0.11.x. It exists for programs that
//! already run on async-std; new programs on smol can use `metaserve-quinn`
//! with its `smol` feature instead (see this crate's README). Everything here
//! has exactly the signatures of `metaserve-tokio`: switching runtimes is
//! switching the crate name.
//!
//! You establish the quinn connections yourself (any configuration works;
//! [`tls`] has helpers with the right ALPN and transport limits), then:
//!
//! ```no_run
//! # async fn game(connection: quinn::Connection) -> Result<(), metaserve_async_std::ClientError> {
//! use futures_util::StreamExt;
//! use metaserve_async_std::{browse, publish, BrowseOptions, BrowserEvent, PublishOptions};
//!
//! // A game server: publish a heartbeat every time the game state changes.
//! let heartbeats = futures_util::stream::iter(["map=q3dm17;players=3".into()]);
//! publish(&connection, PublishOptions::new("quake3"), heartbeats).await?;
//!
//! // A game client: the live list.
//! let mut list = browse(&connection, BrowseOptions::new("quake3")).await?;
//! while let Some(event) = list.next().await {
//!     if let BrowserEvent::Synced { .. } = event? {
//!         println!("{} servers", list.servers().len());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The whole system in one program: a meta server on a free loopback port
//! with a development certificate, a game server publishing, a game client
//! listing it, and a graceful shutdown that closes both with `SHUTTING_DOWN`:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use futures_util::{stream, StreamExt};
//! use metaserve_async_std::{
//!     browse, client_endpoint, meta_server, publish, server_endpoint, tls, BrowseOptions, BrowserEvent, ClientError,
//!     ErrorCode, PublishOptions, RegistryConfig,
//! };
//!
//! async_std::task::block_on(async {
//!     let cert = tls::DevCertificate::generate()?;
//!     let config = RegistryConfig::default();
//!     let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config)?;
//!     let endpoint = server_endpoint("127.0.0.1:0".parse()?, server_config)?;
//!     let addr = endpoint.local_addr()?;
//!     let server = meta_server(config);
//!     let handle = server.handle(); // stats(), servers(), shutdown() from anywhere
//!     let serving = async_std::task::spawn(async move { server.serve(endpoint).await });
//!
//!     // Clients trust the development certificate by its fingerprint.
//!     let client = client_endpoint("127.0.0.1:0".parse()?, tls::client_config_pinned(cert.fingerprint)?)?;
//!
//!     // A game server: one heartbeat, then the driver keeps the entry alive.
//!     let connection = client.connect(addr, "localhost")?.await?;
//!     let heartbeats = stream::iter([Bytes::from_static(b"map=q3dm17")]).chain(stream::pending());
//!     let publishing =
//!         async_std::task::spawn(async move { publish(&connection, PublishOptions::new("quake3"), heartbeats).await });
//!
//!     // A game client: wait for a complete list with the game server in it.
//!     let connection = client.connect(addr, "localhost")?.await?;
//!     let mut list = browse(&connection, BrowseOptions::new("quake3")).await?;
//!     while let Some(event) = list.next().await {
//!         if matches!(event?, BrowserEvent::Synced { .. }) && list.servers().len() == 1 {
//!             break;
//!         }
//!     }
//!     let entry = list.servers().next().ok_or("no server listed")?;
//!     assert_eq!(entry.blob, Bytes::from_static(b"map=q3dm17"));
//!     assert_eq!(handle.stats().publishers, 1);
//!
//!     // Shutting down closes every session with SHUTTING_DOWN.
//!     handle.shutdown();
//!     serving.await;
//!     match publishing.await {
//!         Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::SHUTTING_DOWN),
//!         other => panic!("expected SHUTTING_DOWN, got {other:?}"),
//!     }
//!     Ok(())
//! })
//! # }
//! ```
//!
//! The optional reconnect helpers are here too: [`reconnect`] returns a
//! [`Reconnect`], which connects with [`Backoff`], publishes across lost
//! connections ([`Reconnect::publish`]) and browses with a list that resumes
//! after a reconnect ([`Reconnect::browse`]); see `metaserve-tokio`'s crate
//! documentation for a tour, and the examples, which use them.
//!
//! The driver loop lives in `metaserve-quinn` and is shared with
//! `metaserve-tokio`. This crate is all of `metaserve-quinn` re-exported,
//! plus the functions that need a runtime ([`publish`], [`reconnect`],
//! [`meta_server`], [`server_endpoint`], [`server_endpoint_with`],
//! [`client_endpoint`]) with quinn's async-std runtime
//! ([`quinn::AsyncStdRuntime`], also as [`runtime()`]) passed for you. Its
//! tasks run on async-std's global executor and its sockets and timers on
//! async-io's reactor, so nothing here needs to be called from inside a
//! particular runtime context.

#![forbid(unsafe_code)]

// metaserve-quinn's whole API. The functions `bind_runtime!` defines shadow
// their namesakes there, which take the runtime as their first argument.
pub use metaserve_quinn::*;

metaserve_quinn::bind_runtime!(
    quinn::AsyncStdRuntime,
    "async-std",
    "Its tasks run on async-std's global executor, whichever thread this is called from."
);
