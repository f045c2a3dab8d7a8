//! What the examples share. The command line (`cli.rs`), the fake game
//! (`game.rs`, for the publisher) and the table (`table.rs`, for the browser)
//! are runtime-neutral, and metaserve-async-std's examples include them too;
//! only this file knows about tokio.

pub(crate) use metaserve_tokio as driver;

mod cli;

use anyhow::Context as _;

pub(crate) use cli::{init_logging, retry_line, MetaServerArgs};

impl MetaServerArgs {
    /// Resolves --server: the meta server to (re)connect to.
    pub(crate) async fn reconnect(&self) -> anyhow::Result<driver::Reconnect> {
        let server = self.server();
        let addr = tokio::net::lookup_host(server)
            .await
            .with_context(|| format!("resolving {server}"))?
            .next()
            .with_context(|| format!("{server} has no address"))?;
        self.reconnect_to(addr)
    }
}
