//! Reaching a meta server from the command line, runtime-neutral: the
//! examples of metaserve-tokio and of metaserve-async-std (a symlink) both
//! use this file, each with its own runtime crate as `crate::common::driver`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tracing_subscriber::EnvFilter;

use crate::common::driver::{self, tls};

/// Where the meta server is and why to trust it.
///
/// Without --fingerprint or --ca, the system's certificate roots decide,
/// as for a public meta server with a certificate from a public CA.
#[derive(Debug, Args)]
#[command(next_help_heading = "Meta server")]
pub(crate) struct MetaServerArgs {
    /// The meta server, as HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:27950")]
    server: String,

    /// The name its certificate must carry [default: the host of --server,
    /// or localhost if that is an IP address].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,

    /// Trust exactly the certificate with this SHA-256 fingerprint, as
    /// printed by `metaserve-daemon --dev` (64 hex digits, colons optional).
    #[arg(long, value_name = "SHA256", conflicts_with = "ca")]
    fingerprint: Option<tls::Fingerprint>,

    /// Trust the certificate authority (or self-signed certificate) in this
    /// PEM file.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,

    /// The game's namespace on the meta server.
    #[arg(long, value_name = "NS", default_value = "demo")]
    pub(crate) namespace: String,
}

impl MetaServerArgs {
    /// The --server argument, HOST:PORT, to resolve with the runtime's DNS
    /// lookup. Resolved once, at start: the reconnects go to that address.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// The meta server at `addr`, the resolved --server, reached from a new
    /// endpoint: connections to it are made (and remade, with backoff, when
    /// one is lost) by the driver's reconnect helpers.
    pub(crate) fn reconnect_to(&self, addr: SocketAddr) -> anyhow::Result<driver::Reconnect> {
        let config = match (self.fingerprint, &self.ca) {
            (Some(fingerprint), _) => tls::client_config_pinned(fingerprint)?,
            (None, Some(ca)) => tls::client_config_with_ca(ca).context("loading the --ca certificate")?,
            (None, None) => tls::client_config_with_system_roots()?,
        };
        // Bind the same address family as the server's, so that both an IPv4
        // and an IPv6 meta server work without dual-stack socket settings.
        let any: IpAddr = if addr.is_ipv6() { [0u16; 8].into() } else { [0u8; 4].into() };
        let endpoint = driver::client_endpoint(SocketAddr::new(any, 0), config).context("binding a socket")?;
        Ok(driver::reconnect(endpoint, addr, self.tls_name()))
    }

    fn tls_name(&self) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let host = self.server.rsplit_once(':').map_or(self.server.as_str(), |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            "localhost".into()
        } else {
            host.into()
        }
    }
}

/// The line the examples print when the meta server is lost (or not there
/// yet) and the driver is about to try again.
pub(crate) fn retry_line(retry: &driver::Retry) -> String {
    format!("meta server lost ({}): reconnecting in {} ms", retry.error, retry.delay.as_millis())
}

/// Logs to stderr, filtered by `RUST_LOG`. By default only warnings, plus the
/// driver's info lines (they include the address browsers see a publisher at),
/// minus the reconnect helper's warning per retry: the examples print their
/// own line for each ([`retry_line`]).
pub(crate) fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,metaserve_quinn=info,metaserve_quinn::reconnect=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
