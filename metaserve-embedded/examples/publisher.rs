//! A fake game server publishing to a meta server from a plain loop: no
//! async runtime, just quinn-proto on a blocking UDP socket.
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev --listen 127.0.0.1:27950
//! cargo run -p metaserve-embedded --example embedded-publisher -- \
//!     --server 127.0.0.1:27950 --fingerprint <SHA256> --name Fragfest --duration 10
//! ```
//!
//! The heartbeat changes once a second; at the end the publisher says
//! Goodbye and the entry leaves every browser's list at once.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use metaserve_embedded::tls::{self, Fingerprint};
use metaserve_embedded::QuicSession;
use metaserve_proto::{Publisher, PublisherConfig, PublisherEvent};

/// Publishes `name=...;map=...;players=N/16` heartbeats for a while, then
/// leaves the list cleanly.
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
    /// The server name shown in browsers [default: Embedded <pid>].
    #[arg(long)]
    name: Option<String>,
    /// Seconds to publish before saying Goodbye.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    duration: Duration,
}

/// How often the pretend game changes.
const TICK: Duration = Duration::from_secs(1);
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

    let name = cli.name.unwrap_or_else(|| format!("Embedded {}", std::process::id()));
    let start = Instant::now();
    let end = start + cli.duration;
    let mut players = 0;
    let mut publisher = Publisher::new(PublisherConfig::new(cli.namespace.as_str()), start);
    publisher.set_heartbeat(heartbeat(&name, players).into(), start)?;
    let mut next_tick = start + TICK;

    // The game loop. An engine calls `step` once per frame with its frame
    // deadline; this one only has a game tick once a second.
    loop {
        session.step(&mut publisher, Some(next_tick.min(end)))?;
        while let Some(event) = publisher.poll_event() {
            match event {
                PublisherEvent::Accepted(welcome) => match welcome.publisher {
                    Some(me) => println!("listed as {} (id {}) in {:?}", me.address, me.id, cli.namespace),
                    None => println!("listed in {:?}", cli.namespace),
                },
                PublisherEvent::Rejected { code, reason } => return Err(format!("rejected: {code}: {reason}").into()),
            }
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_tick {
            players = (players + 1) % 17;
            let beat = heartbeat(&name, players);
            println!("heartbeat {beat}");
            publisher.set_heartbeat(beat.into(), now)?; // newest wins; sent when due
            next_tick += TICK;
        }
    }

    session.goodbye(&mut publisher, LINGER)?;
    println!("said goodbye: the meta server closed the session and removed the entry");
    Ok(())
}

/// The heartbeat blob: metaserve never looks inside; the browser examples
/// display this `key=value;` text.
fn heartbeat(name: &str, players: u32) -> String {
    format!("name={name};map=q3dm17;players={players}/16")
}

fn resolve(server: &str) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut addrs = server.to_socket_addrs().map_err(|e| format!("--server {server}: {e}"))?;
    addrs.next().ok_or_else(|| format!("--server {server}: no address").into())
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs = text.parse::<f64>().map_err(|e| e.to_string())?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}
