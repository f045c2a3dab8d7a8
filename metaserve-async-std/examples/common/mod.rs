//! What the examples share. The command line (`cli.rs`), the fake game
//! (`game.rs`) and the table (`table.rs`) are metaserve-tokio's
//! runtime-neutral example code, symlinked here (see the tokio
//! `common/mod.rs` for why); only this file knows about async-std.

pub(crate) use metaserve_async_std as driver;

mod cli;

use std::future::Future;

use anyhow::Context as _;
use async_signal::{Signal, Signals};
use async_std::net::ToSocketAddrs as _;
use futures_util::StreamExt as _;

pub(crate) use cli::{init_logging, retry_line, MetaServerArgs};

impl MetaServerArgs {
    /// Resolves --server: the meta server to (re)connect to.
    pub(crate) async fn reconnect(&self) -> anyhow::Result<driver::Reconnect> {
        let server = self.server();
        let addr = server
            .to_socket_addrs()
            .await
            .with_context(|| format!("resolving {server}"))?
            .next()
            .with_context(|| format!("{server} has no address"))?;
        self.reconnect_to(addr)
    }
}

/// Completes on the first Ctrl-C (SIGINT), which then no longer ends the process.
pub(crate) fn ctrl_c() -> anyhow::Result<impl Future<Output = ()>> {
    let mut signals = Signals::new([Signal::Int]).context("catching Ctrl-C")?;
    Ok(async move {
        signals.next().await;
    })
}
