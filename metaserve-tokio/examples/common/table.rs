//! The live list as a text table, runtime-neutral: the `browser` examples
//! of metaserve-tokio and of metaserve-async-std (a symlink) both use this file.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::common::driver::Server;

/// The NAME, MAP and PLAYERS columns, and their widths.
const COLUMNS: [(&str, usize); 3] = [("name", 24), ("map", 12), ("players", 7)];

/// Writes the list (`servers`) as a table. `shown` remembers what the
/// previous table showed (`None` before the first), to mark what changed since.
pub(crate) fn draw_table<'a>(
    out: &mut Vec<u8>,
    namespace: &str,
    revision: u64,
    servers: impl Iterator<Item = &'a Server>,
    shown: &mut Option<HashMap<SocketAddr, Bytes>>,
) -> std::io::Result<()> {
    let mut previous = shown.take();
    let mut current = HashMap::new();
    let mut servers: Vec<_> = servers.collect();
    servers.sort_by_key(|server| server.address);

    let mut rows = Vec::new();
    for server in &servers {
        let change = match previous.as_mut().map(|previous| previous.remove(&server.address)) {
            Some(None) => "+ new",
            Some(Some(blob)) if blob != server.blob => "~ updated",
            _ => "",
        };
        let marker = if server.port_declared { "*" } else { "" };
        rows.push((format!("{}{marker}", server.address), describe(&server.blob), change));
        current.insert(server.address, server.blob.clone());
    }
    // Whatever the previous table showed and this one lacks has left.
    let mut removed: Vec<_> = previous.into_iter().flatten().collect();
    removed.sort_by_key(|(address, _)| *address);
    rows.extend(removed.iter().map(|(address, blob)| (address.to_string(), describe(blob), "- removed")));
    *shown = Some(current);

    let width = rows.iter().map(|(address, ..)| address.len()).chain(["ADDRESS".len()]).max().unwrap_or_default();
    let plural = if servers.len() == 1 { "" } else { "s" };
    writeln!(out, "namespace {namespace:?}: {} server{plural} at revision {revision}\n", servers.len())?;
    writeln!(out, "{:width$}  {}  CHANGE", "ADDRESS", cells(COLUMNS.map(|(key, _)| key.to_uppercase())))?;
    for (address, description, change) in &rows {
        writeln!(out, "{address:width$}  {description}  {change}")?;
    }
    if servers.iter().any(|server| server.port_declared) {
        writeln!(out, "\n* port declared by the game server; the others as the meta server sees them")?;
    }
    Ok(())
}

/// Follows the sessions of a reconnecting browse, to say how the list came
/// back after the meta server was lost.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    lost: bool,
    back: bool,
    note: Option<String>,
}

impl Sessions {
    /// The session failed; the driver retries.
    pub(crate) fn lost(&mut self) {
        self.lost = true;
        self.note = None;
    }

    /// A session started (its Welcome arrived).
    pub(crate) fn started(&mut self) {
        self.back = std::mem::take(&mut self.lost);
    }

    /// At a Synced, the note for under its table. The first Synced after a
    /// reconnect tells whether the session resumed (a batch of the changes
    /// since) or the list was re-snapshotted (a restarted server cannot
    /// resume: `Reset` and a full snapshot). Redrawn in place, the note stays
    /// for the whole session; in a pipe it is printed once.
    pub(crate) fn note(&mut self, revision: u64, snapshot: bool, redraw: bool) -> Option<&str> {
        let fresh = std::mem::take(&mut self.back);
        if fresh {
            let how = if snapshot { "re-snapshotted" } else { "resumed" };
            self.note = Some(format!("meta server back: {how} at revision {revision}"));
        }
        if fresh || redraw {
            self.note.as_deref()
        } else {
            None
        }
    }
}

/// The NAME, MAP and PLAYERS cells, from a `key=value;...` heartbeat like
/// the `publisher` example's. Other games encode heartbeats differently:
/// those are shown raw, across the three columns.
fn describe(blob: &[u8]) -> String {
    let text = String::from_utf8_lossy(blob);
    let pairs = || text.split(';').filter_map(|pair| pair.split_once('='));
    let values = COLUMNS.map(|(key, _)| pairs().find(|(k, _)| k.trim() == key).map(|(_, value)| value.to_owned()));
    if values.iter().all(Option::is_none) {
        let width = COLUMNS.iter().map(|(_, width)| width + 2).sum::<usize>() - 2;
        return cell(&text, width);
    }
    cells(values.map(|value| value.unwrap_or_else(|| "?".into())))
}

fn cells(values: [String; 3]) -> String {
    let cells = values.iter().zip(COLUMNS).map(|(value, (_, width))| cell(value, width));
    cells.collect::<Vec<_>>().join("  ")
}

/// `text` cut or padded to `width` characters. Heartbeats come from any
/// game server on the internet: control characters are replaced, so that
/// none can move the cursor or recolour the terminal.
fn cell(text: &str, width: usize) -> String {
    let mut clean: String = text.chars().map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if clean.chars().count() > width {
        clean = clean.chars().take(width.saturating_sub(1)).chain(['…']).collect();
    }
    format!("{clean:width$}")
}
