//! A game client's server list from a plain loop: no async runtime, just
//! quinn-proto on a blocking UDP socket.
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev --listen 127.0.0.1:27950
//! cargo run -p metaserve-embedded --example embedded-browser -- \
//!     --server 127.0.0.1:27950 --fingerprint <SHA256> [--once]
//! ```
//!
//! Prints the list after each `Synced`: the first is the complete snapshot,
//! later ones end each batch of changes. `--once` prints the snapshot and
//! leaves.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use metaserve_embedded::tls::{self, Fingerprint};
use metaserve_embedded::QuicSession;
use metaserve_proto::{Browser, BrowserConfig, BrowserEvent};

/// Prints the live server list of a namespace.
#[derive(Debug, Parser)]
struct Cli {
    /// The meta server, as HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    server: String,
    /// SHA-256 fingerprint of the meta server's certificate, as printed by
    /// `metaserve-daemon --dev`.
    #[arg(long, value_name = "SHA256")]
    fingerprint: Fingerprint,
    /// The game's namespace.
    #[arg(long, value_name = "NS", default_value = "demo")]
    namespace: String,
    /// Print the first complete snapshot, then leave.
    #[arg(long)]
    once: bool,
    /// Leave after this many seconds [default: run until killed].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
}

/// How long to wait for the server to confirm the Goodbye.
const LINGER: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let server = resolve(&cli.server)?;
    let config = tls::client_config_pinned(cli.fingerprint)?;
    let mut session = QuicSession::connect(server, "localhost", config)?;
    let mut browser = Browser::new(BrowserConfig::new(cli.namespace.as_str()));
    let end = cli.duration.map(|d| Instant::now() + d);

    // The client loop. An engine calls `step` once per frame with its frame
    // deadline; this one has nothing else to do, so it waits for the network.
    'session: while end.is_none_or(|end| Instant::now() < end) {
        session.step(&mut browser, end)?;
        while let Some(event) = browser.poll_event() {
            match event {
                BrowserEvent::Synced { revision, snapshot } => {
                    print_list(&browser, revision, snapshot);
                    if cli.once {
                        break 'session;
                    }
                }
                BrowserEvent::Rejected { code, reason } => return Err(format!("rejected: {code}: {reason}").into()),
                // The list itself is kept by the browser: `browser.servers()`.
                BrowserEvent::Upsert(_) | BrowserEvent::Remove(_) | BrowserEvent::Reset => {}
            }
        }
    }

    session.goodbye(&mut browser, LINGER)?;
    Ok(())
}

fn print_list(browser: &Browser, revision: u64, snapshot: bool) {
    let mut servers: Vec<_> = browser.servers().collect();
    servers.sort_by_key(|s| s.address);
    let what = if snapshot { "snapshot" } else { "update" };
    println!("{what} at revision {revision}: {} server(s)", servers.len());
    for server in servers {
        println!("  {:<22} {}", server.address.to_string(), String::from_utf8_lossy(&server.blob));
    }
}

fn resolve(server: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut addrs = server.to_socket_addrs().map_err(|e| format!("--server {server}: {e}"))?;
    addrs.next().ok_or_else(|| format!("--server {server}: no address").into())
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs = text.parse::<f64>().map_err(|e| e.to_string())?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}
