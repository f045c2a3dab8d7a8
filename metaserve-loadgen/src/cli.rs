//! Command-line flags, with the hard caps that keep every run bounded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use metaserve_tokio::tls::Fingerprint;

/// Most publishers one run may start.
pub(crate) const MAX_PUBLISHERS: usize = 50_000;
/// Most browsers one run may start.
pub(crate) const MAX_BROWSERS: usize = 1_000;
/// Fastest heartbeat rate per publisher, in Hz.
pub(crate) const MAX_RATE: f64 = 100.0;
/// Most heartbeats per second across all publishers.
pub(crate) const MAX_TOTAL_RATE: f64 = 200_000.0;
/// Smallest blob: the send timestamp, publisher index and sequence number.
pub(crate) const MIN_SIZE: usize = crate::blob::HEADER_LEN;
/// Largest blob (the browsers' default frame limit is 64 KiB + 256 bytes).
pub(crate) const MAX_SIZE: usize = 60_000;
/// Longest measurement window, setup timeout or warm-up.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(600);

/// Load generator for metaserve: drives a real daemon with many publishers
/// and browsers on loopback and reports delivery latency, throughput, and the
/// daemon's CPU time and memory; `baseline` measures what raw quinn moves
/// with the same TLS and transport settings.
///
/// Every run is bounded in count and time. Build in release mode first:
/// cargo build --release -p metaserve-loadgen -p metaserve-daemon
#[derive(Debug, Parser)]
#[command(name = "metaserve-loadgen", version, about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Publishers and browsers against a daemon (started here, or --connect)
    Run(Box<RunArgs>),
    /// Raw quinn bulk throughput on loopback: one stream, then N connections
    Baseline(BaselineArgs),
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 500ms, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > MAX_DURATION {
        return Err(format!("at most {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(d)
}

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Publishers, each on its own QUIC connection
    #[arg(long, short = 'p', default_value_t = 100, value_name = "P")]
    pub(crate) publishers: usize,

    /// Browsers, each on its own QUIC connection
    #[arg(long, short = 'b', default_value_t = 10, value_name = "B")]
    pub(crate) browsers: usize,

    /// Extra browsers that say Hello and then never read a byte: the daemon's
    /// memory at the window's end against its start shows what they cost
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) stalled_browsers: usize,

    /// Heartbeats per second per publisher (every heartbeat changes the blob)
    #[arg(long, short = 'r', default_value_t = 1.0, value_name = "HZ")]
    pub(crate) rate: f64,

    /// Blob size in bytes (at least 16: send time, publisher, sequence)
    #[arg(long, short = 's', default_value_t = 256, value_name = "BYTES")]
    pub(crate) size: usize,

    /// Length of the measurement window
    #[arg(long, short = 'd', default_value = "30s", value_parser = duration, value_name = "DURATION")]
    pub(crate) duration: Duration,

    /// Settling time after every browser holds the full list, before the
    /// window opens (at least one update interval)
    #[arg(long, default_value = "2s", value_parser = duration, value_name = "DURATION")]
    pub(crate) warmup: Duration,

    /// Limit for connecting every client and getting every browser's full list
    #[arg(long, default_value = "120s", value_parser = duration, value_name = "DURATION")]
    pub(crate) setup_timeout: Duration,

    /// The daemon's browser update interval (passed to a daemon started here) [default: 1s]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub(crate) update_interval: Option<Duration>,

    /// The daemon's minimum heartbeat interval (passed to a daemon started
    /// here) [default: half the heartbeat period, at most 1s, so publishers
    /// are never held back]
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub(crate) heartbeat_interval: Option<Duration>,

    /// The metaserve-daemon binary to start [default: next to this binary,
    /// or the workspace's target/release, then target/debug]
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    pub(crate) daemon: Option<PathBuf>,

    /// More flags for the daemon started here (repeatable), e.g. --daemon-arg=--entry-ttl=60s
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true, conflicts_with = "connect")]
    pub(crate) daemon_arg: Vec<String>,

    /// RUST_LOG of the daemon started here (its log is kept in a temporary file)
    #[arg(long, default_value = "warn", value_name = "FILTER")]
    pub(crate) daemon_log: String,

    /// Use a running daemon at this loopback address instead of starting one
    /// (its per-IP and total limits must admit the clients)
    #[arg(long, value_name = "ADDR", requires = "fingerprint")]
    pub(crate) connect: Option<SocketAddr>,

    /// SHA-256 fingerprint of the running daemon's certificate
    #[arg(long, value_name = "SHA256", requires = "connect")]
    pub(crate) fingerprint: Option<Fingerprint>,

    /// Process id of the running daemon, for its CPU time and memory
    #[arg(long, value_name = "PID", requires = "connect")]
    pub(crate) pid: Option<u32>,

    /// Namespace the clients use
    #[arg(long, default_value = "metaserve-loadgen")]
    pub(crate) namespace: String,

    /// Publisher connections per client endpoint (UDP socket); each endpoint
    /// binds its own 127.1.x.y address and publishers declare distinct ports
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub(crate) publishers_per_endpoint: usize,

    /// Browser connections per client endpoint; endpoints bind 127.2.x.y
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) browsers_per_endpoint: usize,

    /// QUIC handshakes in flight at once during setup
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) connect_concurrency: usize,

    /// After the run, measure raw quinn with B parallel connections for this
    /// long and report fan-out as a fraction of it
    #[arg(long, value_parser = duration, value_name = "DURATION")]
    pub(crate) baseline: Option<Duration>,

    /// Print the final report as JSON on stdout (progress stays on stderr)
    #[arg(long)]
    pub(crate) json: bool,

    /// No progress lines
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

impl RunArgs {
    /// Checks the hard caps.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_PUBLISHERS).contains(&self.publishers) {
            bail!("--publishers must be 1 to {MAX_PUBLISHERS}");
        }
        if !(1..=MAX_BROWSERS).contains(&self.browsers) {
            bail!("--browsers must be 1 to {MAX_BROWSERS}");
        }
        if self.stalled_browsers > MAX_BROWSERS {
            bail!("--stalled-browsers must be at most {MAX_BROWSERS}");
        }
        if !(self.rate > 0.0 && self.rate <= MAX_RATE) {
            bail!("--rate must be above 0 and at most {MAX_RATE} Hz");
        }
        if self.rate * self.publishers as f64 > MAX_TOTAL_RATE {
            bail!("--publishers × --rate must be at most {MAX_TOTAL_RATE} heartbeats per second");
        }
        if !(MIN_SIZE..=MAX_SIZE).contains(&self.size) {
            bail!("--size must be {MIN_SIZE} to {MAX_SIZE} bytes");
        }
        if !(1..=10_000).contains(&self.publishers_per_endpoint) {
            bail!("--publishers-per-endpoint must be 1 to 10000");
        }
        if !(1..=MAX_BROWSERS).contains(&self.browsers_per_endpoint) {
            bail!("--browsers-per-endpoint must be 1 to {MAX_BROWSERS}");
        }
        if !(1..=1_000).contains(&self.connect_concurrency) {
            bail!("--connect-concurrency must be 1 to 1000");
        }
        if let Some(addr) = self.connect {
            if !addr.ip().is_loopback() {
                bail!("--connect must be a loopback address: load stays on this machine");
            }
        }
        Ok(())
    }

    /// Time between two heartbeats of one publisher.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.rate)
    }
}

/// Flags of `baseline`.
#[derive(Debug, Clone, Args)]
pub(crate) struct BaselineArgs {
    /// Parallel connections of the second measurement (the first uses one)
    #[arg(long, short = 'c', default_value_t = 10, value_name = "B")]
    pub(crate) connections: usize,

    /// Length of each measurement window
    #[arg(long, short = 'd', default_value = "10s", value_parser = duration, value_name = "DURATION")]
    pub(crate) duration: Duration,

    /// Time before each window opens (slow start, connection setup)
    #[arg(long, default_value = "1s", value_parser = duration, value_name = "DURATION")]
    pub(crate) warmup: Duration,

    /// Print the report as JSON on stdout
    #[arg(long)]
    pub(crate) json: bool,

    /// No progress lines
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
}

impl BaselineArgs {
    /// Checks the hard caps.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_BROWSERS).contains(&self.connections) {
            bail!("--connections must be 1 to {MAX_BROWSERS}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn caps_are_enforced() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).unwrap();
            match cli.command {
                Command::Run(run) => run.validate(),
                Command::Baseline(b) => b.validate(),
            }
        };
        assert!(parse(&["lg", "run"]).is_ok());
        assert!(parse(&["lg", "run", "--publishers", "0"]).is_err());
        assert!(parse(&["lg", "run", "--size", "8"]).is_err());
        assert!(parse(&["lg", "run", "--rate", "0"]).is_err());
        assert!(parse(&["lg", "run", "--publishers", "50000", "--rate", "10"]).is_err());
        assert!(parse(&["lg", "baseline", "--connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["lg", "run", "--duration", "11m"]).is_err());
        assert!(Cli::try_parse_from(["lg", "run", "--connect", "127.0.0.1:1"]).is_err(), "needs --fingerprint");
        let fp = "00".repeat(32);
        assert!(parse(&["lg", "run", "--connect", "192.0.2.1:1", "--fingerprint", &fp]).is_err());
        assert!(parse(&["lg", "run", "--connect", "127.0.0.1:1", "--fingerprint", &fp, "--pid", "1"]).is_ok());
    }
}
