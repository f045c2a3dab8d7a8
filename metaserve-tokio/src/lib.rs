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
//! use metaserve_tokio::{tls, RegistryConfig};
//!
//! let cert = tls::DevCertificate::generate()?;
//! let config = RegistryConfig::default();
//! let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config)?;
//! let endpoint = metaserve_tokio::server_endpoint("[::]:27950".parse()?, server_config)?;
//! let server = metaserve_tokio::meta_server(config); // a `MetaServer` on tokio
//! let handle = server.handle(); // stats() and shutdown() from anywhere
//! server.serve(endpoint).await;
//! # let _ = handle; Ok(()) }
//! ```
//!
//! ## Surviving a lost meta server
//!
//! `publish` and `browse` run one session on the caller's connection and end
//! with it, with the reason ([`ClientError`]). Every game also wants to be
//! back when the meta server restarts or the network drops, so the optional
//! reconnect helpers do that: [`reconnect`] names the meta server and returns
//! a [`Reconnect`], which connects with [`Backoff`] (250 ms doubling to 15 s,
//! with jitter so that the clients of a restarted server do not return in
//! lockstep; every value a knob), and runs
//!
//! - [`Reconnect::publish`]: one heartbeat stream across as many connections
//!   as it takes; each new session first re-sends the newest blob, so a game
//!   that publishes only on change is listed again at once;
//! - [`Reconnect::browse`]: a [`ReconnectingBrowse`], whose sessions resume
//!   from the list's resume point (only the changes since are sent), or start
//!   over with a `Reset` and a fresh snapshot when the server restarted. It
//!   yields [`ReconnectEvent::Retrying`] and [`ReconnectEvent::Connected`], so
//!   a UI can say "reconnecting…".
//!
//! Closes that a retry may cure (lost or reset connections, `SHUTTING_DOWN`,
//! `SERVER_FULL`, `IP_LIMIT`, ...) are retried; final ones (`UNAUTHORIZED`,
//! `BANNED`, `REPLACED`, ...) are returned: [`ClientError::is_transient`]
//! decides, and documents why for each code.
//!
//! ```no_run
//! # async fn game(endpoint: quinn::Endpoint) -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use metaserve_tokio::{BrowseOptions, BrowserEvent, PublishOptions, ReconnectEvent};
//!
//! // `endpoint` from `client_endpoint`, trusting the meta server (see `tls`).
//! let meta = metaserve_tokio::reconnect(endpoint, "203.0.113.7:27950".parse()?, "master.example.net")
//!     .on_retry(|retry| eprintln!("meta server lost ({}): reconnecting in {:?}", retry.error, retry.delay));
//!
//! // A game server: publishes until the heartbeat stream ends, then says Goodbye.
//! let heartbeats = futures_util::stream::iter(["map=q3dm17;players=3".into()]).chain(futures_util::stream::pending());
//! tokio::spawn({
//!     let meta = meta.clone();
//!     async move { meta.publish(PublishOptions::new("quake3"), heartbeats).await }
//! });
//!
//! // A game client: the live list, across reconnects.
//! let mut list = meta.browse(BrowseOptions::new("quake3"));
//! while let Some(event) = list.next().await {
//!     match event? {
//!         ReconnectEvent::Retrying(retry) => println!("reconnecting in {:?}…", retry.delay),
//!         ReconnectEvent::Browser(BrowserEvent::Synced { .. }) => println!("{} servers", list.servers().len()),
//!         _ => {}
//!     }
//! }
//! list.close().await;
//! # Ok(()) }
//! ```
//!
//! The `publisher` and `browser` examples run on these helpers.
//!
//! ## One implementation, several runtimes
//!
//! The driver loop lives in `metaserve-quinn` and is shared with
//! `metaserve-async-std`. This crate is all of `metaserve-quinn`
//! re-exported, plus the functions that need a runtime with tokio's passed
//! for you: [`publish`], [`reconnect`], [`meta_server`], [`server_endpoint`],
//! [`server_endpoint_with`] and [`client_endpoint`]. The types are
//! `metaserve-quinn`'s, whichever runtime crate made them. Code that picks
//! its runtime at run time passes [`runtime()`] (or another runtime crate's)
//! to `metaserve-quinn`'s functions of the same names, which take it as
//! their first argument, and to [`MetaServer::new`] and [`Reconnect::new`].

#![forbid(unsafe_code)]

// metaserve-quinn's whole API. The functions `bind_runtime!` defines shadow
// their namesakes there, which take the runtime as their first argument.
pub use metaserve_quinn::*;

metaserve_quinn::bind_runtime!(
    quinn::TokioRuntime,
    "tokio",
    "Call it from within a tokio runtime: its tasks are spawned with `tokio::spawn`."
);
