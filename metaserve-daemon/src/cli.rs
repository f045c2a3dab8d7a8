//! Command-line flags.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

/// The metaserve meta server: game servers publish heartbeats over QUIC,
/// game clients receive the live list.
///
/// Certificates: pass --cert and --key (PEM) for production, or --dev to
/// generate a self-signed certificate and print how clients can trust it.
/// Settings come from flags, then the --config file, then defaults.
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more or less.
/// SIGHUP re-reads the config file's tokens, bans and limits; SIGINT and
/// SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "metaserve-daemon", version, about, long_about)]
pub(crate) struct Cli {
    // `help` rather than a doc comment: rustdoc would read "[::]" as a link.
    #[arg(long, value_name = "ADDR", help = "UDP address to listen on [default: [::]:27950]")]
    pub(crate) listen: Option<SocketAddr>,

    /// TLS certificate chain, PEM
    #[arg(long, value_name = "PEM", requires = "key", conflicts_with = "dev")]
    pub(crate) cert: Option<PathBuf>,

    /// TLS private key, PEM
    #[arg(long, value_name = "PEM", requires = "cert", conflicts_with = "dev")]
    pub(crate) key: Option<PathBuf>,

    /// Development mode: generate a self-signed certificate, write it to
    /// --dev-cert, and print its fingerprint and how to connect the examples
    #[arg(long)]
    pub(crate) dev: bool,

    /// Where --dev writes the generated certificate (PEM)
    #[arg(long, value_name = "PEM", default_value = "metaserve-dev-cert.pem", requires = "dev")]
    pub(crate) dev_cert: PathBuf,

    /// TOML file with the same settings plus per-namespace publish tokens
    /// and bans; SIGHUP re-reads it
    #[arg(long, short, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Serve the operator HTTP API (JSON lists, /metrics, /healthz,
    /// /readyz, status page) on this TCP address, e.g. 127.0.0.1:8080.
    /// Off by default
    #[arg(long, value_name = "ADDR")]
    pub(crate) http: Option<SocketAddr>,

    /// Worker threads of the async runtime [default: one per CPU]. One
    /// thread spends about a fifth less CPU per message while the load fits
    /// in one core (no cross-thread wakeups); more threads carry more load.
    /// See BENCHMARKS.md
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<NonZeroUsize>,

    #[command(flatten)]
    pub(crate) limits: LimitFlags,
}

pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 1s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    duration(&text).map(Some).map_err(serde::de::Error::custom)
}

/// Every limit of the registry; unset flags fall back to the config file's
/// `[limits]` table (same names, with underscores), then to the defaults.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitFlags {
    /// Largest heartbeat blob in bytes [default: 8192]
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_blob_size: Option<NonZeroUsize>,
    /// Minimum interval between a publisher's heartbeats [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// Browsers receive changes at most this often [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) update_interval: Option<Duration>,
    /// Entries without a heartbeat for this long are removed [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) entry_ttl: Option<Duration>,
    /// Connections must say Hello within this time [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) handshake_timeout: Option<Duration>,
    /// Publishers from one IP address [default: 16]
    #[arg(long, value_name = "N")]
    pub(crate) max_publishers_per_ip: Option<NonZeroUsize>,
    /// Browsers from one IP address [default: 64]
    #[arg(long, value_name = "N")]
    pub(crate) max_browsers_per_ip: Option<NonZeroUsize>,
    /// Publishers in total [default: 100000]
    #[arg(long, value_name = "N")]
    pub(crate) max_publishers: Option<NonZeroUsize>,
    /// Browsers in total [default: 100000]
    #[arg(long, value_name = "N")]
    pub(crate) max_browsers: Option<NonZeroUsize>,
    /// Connections that have not said Hello yet [default: 10000]
    #[arg(long, value_name = "N")]
    pub(crate) max_handshakes: Option<NonZeroUsize>,
    /// Namespaces at once [default: 1024]
    #[arg(long, value_name = "N")]
    pub(crate) max_namespaces: Option<NonZeroUsize>,
    /// Longest namespace name in bytes [default: 64]
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_namespace_len: Option<NonZeroUsize>,
    /// Tombstones kept per namespace for resuming browsers [default: 10000]
    #[arg(long, value_name = "N")]
    pub(crate) max_tombstones: Option<usize>,
    /// Longest publish token in bytes [default: 256]
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_token_len: Option<NonZeroUsize>,
}
