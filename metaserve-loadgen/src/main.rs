//! `metaserve-loadgen`: drives a real `metaserve-daemon` with many
//! publishers and browsers over QUIC on loopback, and measures what the
//! design promises: delivery latency (heartbeat handed to `publish` →
//! browser event), updates and bytes delivered per second, and the daemon's
//! CPU time and memory. `baseline` measures raw quinn with the same TLS and
//! transport settings, so fan-out can be put as a fraction of what quinn
//! itself moves.
//!
//! ```text
//! cargo build --release -p metaserve-loadgen -p metaserve-daemon
//! target/release/metaserve-loadgen run --publishers 1000 --browsers 10 --rate 1 --size 256 --duration 30s
//! target/release/metaserve-loadgen run ... --connect 127.0.0.1:27950 --fingerprint <SHA256> --pid <PID>
//! target/release/metaserve-loadgen baseline --connections 10 --duration 10s --json
//! ```
//!
//! Modules: `cli` (flags and hard caps), `daemon` (the daemon process),
//! `publishers`, `browsers`, `blob` (timestamped blobs), `stats`
//! (histograms, shared counters), `procfs` (CPU and memory from /proc),
//! `report` (progress, tables, JSON), `baseline` (raw quinn), and `run`
//! (the sequence of a load run).

#![forbid(unsafe_code)]

mod baseline;
mod blob;
mod browsers;
mod cli;
mod daemon;
mod procfs;
mod publishers;
mod report;
mod run;
mod stats;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::cli::{BaselineArgs, Cli, Command};
use crate::report::Progress;

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

async fn run_command(args: cli::RunArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let report = run::run(args).await?;
    if json {
        print_json(&report)?;
    } else {
        report.write_table(&mut std::io::stdout().lock())?;
    }
    let h = &report.health;
    let clients_ok = h.publishers_failed + h.publishers_hung + h.browsers_failed + h.browsers_hung == 0;
    let daemon_ok = report.daemon.is_some() || report.config.daemon_pid.is_none();
    Ok(if clients_ok && daemon_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn baseline_command(args: BaselineArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let progress = Progress::new(args.quiet);
    let report = baseline::run(args.connections, args.warmup, args.duration, &progress).await?;
    if args.json {
        print_json(&report)?;
    } else {
        report::write_baseline(&mut std::io::stdout().lock(), &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Fix the clock epoch the blobs' timestamps count from.
    let _ = blob::now_ns();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_command(*args).await,
            Command::Baseline(args) => baseline_command(args).await,
        }
    });
    // Tasks of clients that did not end in time must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
