//! A terminal server browser: the live list of a namespace as a table that
//! redraws whenever the meta server sends a batch of changes.
//!
//! Against a development meta server (it prints its certificate's
//! fingerprint) with a few `publisher` examples running:
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev
//! cargo run -p metaserve-tokio --example browser -- --fingerprint <SHA256>
//! cargo run -p metaserve-tokio --example browser -- --fingerprint <SHA256> --once
//! ```
//!
//! `--once` prints the first complete snapshot and exits, for scripts.

mod common;
#[path = "common/table.rs"]
mod table;

use std::io::{IsTerminal as _, Write as _};
use std::pin::pin;

use anyhow::Context as _;
use clap::Parser;
use futures_util::StreamExt as _;
use metaserve_tokio::{browse, BrowseOptions, BrowserEvent};

/// Shows the live server list of a namespace, redrawn on every change.
#[derive(Debug, Parser)]
struct Cli {
    /// Print the list once, as soon as the first snapshot is complete, and exit.
    #[arg(long)]
    once: bool,

    #[command(flatten)]
    meta: common::MetaServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let cli = Cli::parse();
    let namespace = cli.meta.namespace.as_str();
    let (endpoint, connection) = cli.meta.connect().await?;
    let context = || format!("browsing namespace {namespace:?}");
    let mut list = browse(&connection, BrowseOptions::new(namespace)).await.with_context(context)?;

    // Redrawing in place only makes sense on a screen; a pipe or a file
    // gets one table after another.
    let redraw = !cli.once && std::io::stdout().is_terminal();
    let mut shown = None;
    let mut interrupted = pin!(tokio::signal::ctrl_c());
    while let Some(event) = tokio::select! {
        event = list.next() => event,
        _ = &mut interrupted => None,
    } {
        // Between two Synced events the list is mid-batch (or mid-snapshot):
        // drawing it then would show a state the registry never had.
        let BrowserEvent::Synced { revision, .. } = event.with_context(context)? else { continue };
        let mut screen = Vec::new();
        if redraw {
            screen.extend_from_slice(b"\x1b[2J\x1b[H");
        } else if shown.is_some() {
            screen.push(b'\n');
        }
        table::draw_table(&mut screen, namespace, revision, &list, &mut shown)?;
        // One write per table, so the terminal never shows half a redraw.
        std::io::stdout().lock().write_all(&screen)?;
        if cli.once {
            break;
        }
    }

    // Say Goodbye rather than vanish: the meta server frees the session at
    // once instead of after the idle timeout.
    list.close().await.with_context(context)?;
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}
