//! A terminal server browser on async-std: metaserve-tokio's `browser`
//! example, same command line and table.
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev
//! cargo run -p metaserve-async-std --example async-std-browser -- --fingerprint <SHA256>
//! cargo run -p metaserve-async-std --example async-std-browser -- --fingerprint <SHA256> --once
//! ```
//!
//! `--once` prints the first complete snapshot and exits, for scripts. A
//! lost meta server is reconnected to with backoff, resuming the list, as in
//! the tokio example (with `--once`, it is an error instead).

mod common;
#[path = "common/table.rs"]
mod table;

use std::io::{IsTerminal as _, Write as _};
use std::pin::pin;

use anyhow::Context as _;
use clap::Parser;
use futures_util::future::{self, Either};
use futures_util::StreamExt as _;
use metaserve_async_std::{BrowseOptions, BrowserEvent, ReconnectEvent};

/// Shows the live server list of a namespace, redrawn on every change.
#[derive(Debug, Parser)]
struct Cli {
    /// Print the list once, as soon as the first snapshot is complete, and exit.
    #[arg(long)]
    once: bool,

    #[command(flatten)]
    meta: common::MetaServerArgs,
}

fn main() -> anyhow::Result<()> {
    common::init_logging();
    let cli = Cli::parse();
    async_std::task::block_on(async {
        let namespace = cli.meta.namespace.as_str();
        let meta = cli.meta.reconnect().await?;
        let context = || format!("browsing namespace {namespace:?}");
        let mut list = meta.browse(BrowseOptions::new(namespace));

        // Redraw in place on a screen; a pipe gets one table after another.
        let redraw = !cli.once && std::io::stdout().is_terminal();
        let mut shown = None;
        let mut sessions = table::Sessions::default();
        let mut interrupted = pin!(common::ctrl_c()?);
        while let Either::Left((Some(event), _)) = future::select(list.next(), interrupted.as_mut()).await {
            // Only a Synced list is a state the registry actually had.
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
            std::io::stdout().lock().write_all(&screen)?;
            if cli.once {
                break;
            }
        }

        // Say Goodbye rather than vanish, and let the close reach the server.
        list.close().await;
        meta.endpoint().wait_idle().await;
        Ok(())
    })
}
