//! A fake game server that publishes a changing heartbeat to a meta server.
//!
//! Start a development meta server, which prints its certificate's
//! fingerprint, then publish a few fake servers into its `demo` namespace:
//!
//! ```text
//! cargo run -p metaserve-daemon -- --dev
//! cargo run -p metaserve-tokio --example publisher -- --fingerprint <SHA256> --name Fragfest
//! cargo run -p metaserve-tokio --example publisher -- --fingerprint <SHA256> --port 27960
//! ```
//!
//! Watch them with the `browser` example. Ctrl-C ends the heartbeat stream:
//! the driver says Goodbye and the entry disappears from every browser at
//! once, instead of lingering until it expires.
//!
//! When the meta server goes away (restarted, killed, network down), the
//! publisher says so and reconnects with backoff, and the new session
//! publishes the game's current heartbeat at once; it also waits for a meta
//! server that is not up yet. It gives up only on a final answer, such as a
//! wrong publish token.

mod common;
#[path = "common/game.rs"]
mod game;

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::{stream, Stream, StreamExt as _};
use game::{Cli, Game};
use metaserve_tokio::PublishOptions;
use tokio::time::{interval_at, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let cli = Cli::parse();
    let game = Game::new(cli.name);
    let meta = cli.meta.reconnect().await?.on_retry(|retry| println!("{}", common::retry_line(retry)));

    let mut options = PublishOptions::new(cli.meta.namespace.as_str());
    options.declared_port = cli.port;
    options.token = cli.token.map(Bytes::from);

    println!("publishing {:?} in namespace {:?}; Ctrl-C to leave", game.name, cli.meta.namespace);
    // The game itself does not know about Ctrl-C: the stream simply ends,
    // which is how `publish` learns it is time to say Goodbye. It knows
    // nothing of reconnects either: the driver re-sends its last heartbeat.
    let heartbeats = heartbeats(game, cli.interval).take_until(tokio::signal::ctrl_c());
    meta.publish(options, heartbeats)
        .await
        .with_context(|| format!("publishing in namespace {:?}", cli.meta.namespace))?;
    println!("left cleanly: the meta server removed the entry");
    meta.endpoint().wait_idle().await;
    Ok(())
}

/// One heartbeat now, then one per tick on which the game state changed.
/// Unchanged ticks send nothing: the driver keeps the entry alive by itself.
fn heartbeats(game: Game, every: Duration) -> impl Stream<Item = Bytes> {
    let first = game.heartbeat();
    let ticks = interval_at(Instant::now() + every, every);
    let changes = stream::unfold((game, ticks), |(mut game, mut ticks)| async move {
        loop {
            ticks.tick().await;
            if game.advance() {
                return Some((game.heartbeat(), (game, ticks)));
            }
        }
    });
    stream::once(async { first }).chain(changes).inspect(|text| println!("{text}")).map(Bytes::from)
}
