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
//!
//! When the meta server goes away, the browser says so, keeps showing the
//! last list, and reconnects with backoff; back, it says whether it resumed
//! (only the changes since were sent) or re-snapshotted (a restarted server
//! cannot resume a list it never had). With `--once` a lost or unreachable
//! meta server is an error instead: a script should not wait forever.

mod common;
#[path = "common/table.rs"]
mod table;

use std::io::{IsTerminal as _, Write as _};
use std::pin::pin;

use anyhow::Context as _;
use clap::Parser;
use futures_util::StreamExt as _;
use metaserve_tokio::{BrowseOptions, BrowserEvent, ReconnectEvent};

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
    let meta = cli.meta.reconnect().await?;
    let context = || format!("browsing namespace {namespace:?}");
    let mut list = meta.browse(BrowseOptions::new(namespace));

    // Redrawing in place only makes sense on a screen; a pipe or a file
    // gets one table after another.
    let redraw = !cli.once && std::io::stdout().is_terminal();
    let mut shown = None;
    let mut sessions = table::Sessions::default();
    let mut interrupted = pin!(tokio::signal::ctrl_c());
    while let Some(event) = tokio::select! {
        event = list.next() => event,
        _ = &mut interrupted => None,
    } {
        // Between two Synced events the list is mid-batch (or mid-snapshot):
        // drawing it then would show a state the registry never had.
        let (revision, snapshot) = match event.with_context(context)? {
            ReconnectEvent::Browser(BrowserEvent::Synced { revision, snapshot }) => (revision, snapshot),
            ReconnectEvent::Retrying(retry) if cli.once => return Err(retry.error).with_context(context),
            ReconnectEvent::Retrying(retry) => {
                println!("{}", common::retry_line(&retry));
                sessions.lost();
                continue;
            }
            ReconnectEvent::Connected { .. } => {
                sessions.started();
                continue;
            }
            _ => continue,
        };
        let mut screen = Vec::new();
        if redraw {
            screen.extend_from_slice(b"\x1b[2J\x1b[H");
        } else if shown.is_some() {
            screen.push(b'\n');
        }
        table::draw_table(&mut screen, namespace, revision, list.servers(), &mut shown)?;
        if let Some(note) = sessions.note(revision, snapshot, redraw) {
            writeln!(screen, "\n{note}")?;
        }
        // One write per table, so the terminal never shows half a redraw.
        std::io::stdout().lock().write_all(&screen)?;
        if cli.once {
            break;
        }
    }

    // Say Goodbye rather than vanish: the meta server frees the session at
    // once instead of after the idle timeout.
    list.close().await;
    meta.endpoint().wait_idle().await;
    Ok(())
}
