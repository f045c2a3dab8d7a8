//! metaserve on tokio: publish a game server, browse the live list, or embed
//! a complete meta server, over QUIC with [quinn](https://docs.rs/quinn) 0.11.
//!
//! You establish the quinn connections yourself (any configuration works;
//! [`tls`] has helpers with the right ALPN and transport limits), then:
//!
//! ```no_run
//! # async fn game(connection: quinn::Connection) -> Result<(), metaserve_tokio::ClientError> {
//! use futures_util::StreamExt;
//! use metaserve_tokio::{browse, publish, BrowseOptions, BrowserEvent, PublishOptions};
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
//! A complete meta server inside any tokio program (a running example is
//! in this crate's tests):
//!
//! ```no_run
//! # async fn server() -> Result<(), Box<dyn std::error::Error>> {
//! use metaserve_tokio::{tls, MetaServer, RegistryConfig};
//!
//! let cert = tls::DevCertificate::generate()?;
//! let config = RegistryConfig::default();
//! let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config)?;
//! let endpoint = metaserve_tokio::server_endpoint("[::]:27950".parse()?, server_config)?;
//! let server = MetaServer::new(config);
//! let handle = server.handle(); // stats() and shutdown() from anywhere
//! server.serve(endpoint).await;
//! # let _ = handle; Ok(()) }
//! ```
//!
//! The driver loop lives in `metaserve-quinn` and is shared with
//! `metaserve-async-std`; this crate passes it tokio's quinn runtime.

#![forbid(unsafe_code)]

pub use metaserve_quinn::{
    browse, browse_with, tls, Ban, BanTarget, Browse, BrowseOptions, Browser, BrowserEvent, ClientError, CodeCounts,
    Counters, EntryInfo, ErrorCode, MetaServerHandle, NamespaceInfo, PublishOptions, RegistryConfig, Resume, Server,
    Stats, Traffic, Welcome, ALPN,
};

metaserve_quinn::bind_runtime!(
    quinn::TokioRuntime,
    "tokio",
    "Call it from within a tokio runtime: its tasks are spawned with `tokio::spawn`."
);
