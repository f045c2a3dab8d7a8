//! A fake game server that publishes a changing heartbeat to a meta server,
//! on async-std: metaserve-tokio's `publisher` example, same command line.
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev
//! cargo run -p metaserve-async-std --example async-std-publisher -- --fingerprint <SHA256> --name Fragfest
//! ```
//!
//! Watch it with either crate's `browser` example. Ctrl-C ends the heartbeat
//! stream: the driver says Goodbye and the entry disappears at once. A lost
//! meta server is reconnected to with backoff, as in the tokio example.

mod common;
#[path = "common/game.rs"]
mod game;

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{stream, Stream, StreamExt as _};
use game::{Cli, Game};
use metaserve_async_std::PublishOptions;

fn main() -> anyhow::Result<()> {
    common::init_logging();
    let cli = Cli::parse();
    async_std::task::block_on(async {
        let game = Game::new(cli.name);
        let meta = cli.meta.reconnect().await?.on_retry(|retry| println!("{}", common::retry_line(retry)));

        let mut options = PublishOptions::new(cli.meta.namespace.as_str());
        options.declared_port = cli.port;
        options.token = cli.token.map(Bytes::from);

        println!("publishing {:?} in namespace {:?}; Ctrl-C to leave", game.name, cli.meta.namespace);
        // Ctrl-C ends the stream, which is how `publish` learns it is time
        // to say Goodbye; across reconnects the driver re-sends the last heartbeat.
        let heartbeats = heartbeats(game, cli.interval).take_until(common::ctrl_c()?);
        meta.publish(options, heartbeats)
            .await
            .with_context(|| format!("publishing in namespace {:?}", cli.meta.namespace))?;
        println!("left cleanly: the meta server removed the entry");
        meta.endpoint().wait_idle().await;
        Ok(())
    })
}

/// One heartbeat now, then one per tick on which the game state changed.
/// Unchanged ticks send nothing: the driver keeps the entry alive by itself.
fn heartbeats(game: Game, every: Duration) -> impl Stream<Item = Bytes> {
    let first = game.heartbeat();
    let changes = stream::unfold(game, move |mut game| async move {
        loop {
            async_std::task::sleep(every).await;
            if game.advance() {
                return Some((game.heartbeat(), game));
            }
        }
    });
    stream::once(async { first }).chain(changes).inspect(|text| println!("{text}")).map(Bytes::from)
}
