//! What the examples share. The command line (`cli.rs`), the fake game
//! (`game.rs`, for the publisher) and the table (`table.rs`, for the browser)
//! are runtime-neutral; only this file knows about tokio.
//!
//! metaserve-async-std's examples use the same three files through symlinks
//! in its `examples/common/`: one copy to maintain, and each package holds
//! them (`cargo package` flattens a symlink into the file it points to, so
//! the published crates build their examples on their own). A `#[path]`
//! reaching into this directory would not be packaged. A checkout without
//! symlinks (Windows without `core.symlinks`) cannot build the async-std
//! examples.

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
