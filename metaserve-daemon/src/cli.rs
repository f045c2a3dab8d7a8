//! Command-line flags.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

use crate::http::HttpConfig;

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

    /// UDP receive and send buffer size to ask the kernel for, in bytes
    /// [default: 4194304]. Linux caps it at net.core.rmem_max/wmem_max;
    /// the daemon logs what it got
    #[arg(long, value_name = "BYTES")]
    pub(crate) udp_buffer: Option<NonZeroUsize>,

    #[command(flatten)]
    pub(crate) limits: LimitFlags,

    #[command(flatten)]
    pub(crate) http_limits: HttpLimitFlags,
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
    /// Connections from one IP address that have not said Hello yet [default: 64]
    #[arg(long, value_name = "N")]
    pub(crate) max_handshakes_per_ip: Option<NonZeroUsize>,
    /// Connections from one IPv4 /24 or IPv6 /48 that have not said Hello yet [default: 1024]
    #[arg(long, value_name = "N")]
    pub(crate) max_handshakes_per_network: Option<NonZeroUsize>,
    /// QUIC handshakes in progress; more attempts are refused before any
    /// TLS work [default: 1024]
    #[arg(long, value_name = "N")]
    pub(crate) max_connecting: Option<NonZeroUsize>,
    /// QUIC handshakes in progress from one IP address [default: 64]
    #[arg(long, value_name = "N")]
    pub(crate) max_connecting_per_ip: Option<NonZeroUsize>,
    /// Above this many QUIC handshakes in progress, clients must validate
    /// their address with a Retry first; 0: always [default: 64]
    #[arg(long, value_name = "N")]
    pub(crate) validate_above: Option<usize>,
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

/// The operator HTTP server's limits (they apply with `--http`); unset flags
/// fall back to the config file's `[http_limits]` table (the flag's name
/// without `--http-`, with underscores), then to the defaults. All take
/// effect at start.
#[derive(Debug, Default, Clone, PartialEq, Eq, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(next_help_heading = "HTTP limits")]
pub(crate) struct HttpLimitFlags {
    /// Threads of the HTTP server's own runtime, apart from the QUIC
    /// runtime's, so that HTTP work never delays the QUIC path [default: 1]
    // An explicit id: `threads` is the QUIC runtime's flag.
    #[arg(id = "http_threads", long = "http-threads", value_name = "N")]
    pub(crate) threads: Option<NonZeroUsize>,
    /// Open HTTP connections in total; more are closed at once [default: 1024]
    #[arg(long = "http-max-connections", value_name = "N")]
    pub(crate) max_connections: Option<NonZeroUsize>,
    /// Open HTTP connections from one IP address; more are closed at once
    /// [default: 64]
    #[arg(long = "http-max-connections-per-ip", value_name = "N")]
    pub(crate) max_connections_per_ip: Option<NonZeroUsize>,
    /// Time a client has to send a whole request head, counted from when the
    /// connection opens or its previous response was sent: also how long an
    /// idle keep-alive connection stays open [default: 10s]
    #[arg(long = "http-header-timeout", value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) header_timeout: Option<Duration>,
    /// A connection on which no byte moves in either direction for this
    /// long, while no request of it is being handled, is closed (a client
    /// that stopped reading its response) [default: 30s]
    #[arg(long = "http-idle-timeout", value_name = "DURATION", value_parser = duration)]
    #[serde(deserialize_with = "de_duration")]
    pub(crate) idle_timeout: Option<Duration>,
    /// Largest request head (request line and headers) in bytes, and the
    /// most a connection buffers; at least 8192 [default: 16384]
    #[arg(long = "http-max-request-head", value_name = "BYTES", value_parser = request_head)]
    #[serde(deserialize_with = "de_request_head")]
    pub(crate) max_request_head: Option<usize>,
    /// Requests handled at once; more wait for a turn [default: 64]
    #[arg(long = "http-max-concurrent-requests", value_name = "N")]
    pub(crate) max_concurrent_requests: Option<NonZeroUsize>,
}

fn request_head(s: &str) -> Result<usize, String> {
    let bytes: usize = s.parse().map_err(|e| format!("{e}: a number of bytes"))?;
    if bytes < HttpConfig::MIN_REQUEST_HEAD {
        return Err(format!("must be at least {} bytes (hyper's smallest buffer)", HttpConfig::MIN_REQUEST_HEAD));
    }
    Ok(bytes)
}

fn de_request_head<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<usize>, D::Error> {
    let bytes = usize::deserialize(de)?;
    request_head(&bytes.to_string()).map(Some).map_err(serde::de::Error::custom)
}

impl HttpLimitFlags {
    /// The limits in force: these flags over `file`'s over the defaults.
    pub(crate) fn resolve(&self, file: &HttpLimitFlags) -> HttpConfig {
        let default = HttpConfig::default();
        let count = |flag: Option<NonZeroUsize>, file: Option<NonZeroUsize>, default: usize| {
            flag.or(file).map_or(default, NonZeroUsize::get)
        };
        HttpConfig {
            threads: self.threads.or(file.threads).unwrap_or(default.threads),
            max_connections: count(self.max_connections, file.max_connections, default.max_connections),
            max_connections_per_ip: count(
                self.max_connections_per_ip,
                file.max_connections_per_ip,
                default.max_connections_per_ip,
            ),
            header_timeout: self.header_timeout.or(file.header_timeout).unwrap_or(default.header_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout).unwrap_or(default.idle_timeout),
            max_request_head: self.max_request_head.or(file.max_request_head).unwrap_or(default.max_request_head),
            max_concurrent_requests: count(
                self.max_concurrent_requests,
                file.max_concurrent_requests,
                default.max_concurrent_requests,
            ),
        }
    }

    /// The config file's keys that differ between `self` and `other`, as
    /// `http_limits.<key>` (what a reload reports as needing a restart).
    pub(crate) fn changed(&self, other: &HttpLimitFlags) -> Vec<&'static str> {
        [
            ("http_limits.threads", self.threads != other.threads),
            ("http_limits.max_connections", self.max_connections != other.max_connections),
            ("http_limits.max_connections_per_ip", self.max_connections_per_ip != other.max_connections_per_ip),
            ("http_limits.header_timeout", self.header_timeout != other.header_timeout),
            ("http_limits.idle_timeout", self.idle_timeout != other.idle_timeout),
            ("http_limits.max_request_head", self.max_request_head != other.max_request_head),
            ("http_limits.max_concurrent_requests", self.max_concurrent_requests != other.max_concurrent_requests),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}
