//! The fake game server of the `publisher` examples, runtime-neutral: its
//! command line and a pretend game whose heartbeat changes as it runs.
//! Used by the examples of metaserve-tokio and of metaserve-async-std (a symlink).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::common;

/// A fake game server: publishes `name=...;map=...;players=N/M` heartbeats
/// until Ctrl-C, then leaves the list cleanly.
#[derive(Debug, Parser)]
pub(crate) struct Cli {
    /// The server name shown in browsers [default: Fake Server <random number>].
    #[arg(long)]
    pub(crate) name: Option<String>,

    /// The port players connect to, if it differs from the one this
    /// publisher's connection comes from.
    #[arg(long)]
    pub(crate) port: Option<u16>,

    /// Publish token, for a namespace that requires one.
    #[arg(long)]
    pub(crate) token: Option<String>,

    /// Seconds between game ticks. Ticks faster than the meta server's
    /// heartbeat interval are coalesced: only the newest state is sent.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub(crate) interval: Duration,

    #[command(flatten)]
    pub(crate) meta: common::MetaServerArgs,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs = text.parse::<f64>().map_err(|e| e.to_string())?;
    let duration = Duration::try_from_secs_f64(secs).ok().filter(|duration| !duration.is_zero());
    duration.ok_or_else(|| "expected a positive number of seconds".into())
}

const MAPS: [&str; 5] = ["q3dm17", "q3dm6", "q3tourney2", "q3dm13", "q3ctf1"];
const MAP_TIME: Duration = Duration::from_secs(20);
const MAX_PLAYERS: u32 = 16;

/// A pretend game: the map rotates every [`MAP_TIME`], players come and go.
pub(crate) struct Game {
    pub(crate) name: String,
    maps: std::iter::Cycle<std::array::IntoIter<&'static str, 5>>,
    map: &'static str,
    map_since: Instant,
    players: u32,
    rng: XorShift,
}

impl Game {
    pub(crate) fn new(name: Option<String>) -> Self {
        let mut rng = XorShift::from_clock();
        let name = name.unwrap_or_else(|| format!("Fake Server {}", rng.below(1000)));
        let mut maps = MAPS.into_iter().cycle();
        // Start on a random map so that several fake servers differ.
        let map = maps.by_ref().nth(rng.below(MAPS.len() as u64) as usize).unwrap_or("q3dm17");
        let players = rng.below(u64::from(MAX_PLAYERS) + 1) as u32;
        Game { name, maps, map, map_since: Instant::now(), players, rng }
    }

    /// Moves the game on by one tick; true if anything visible changed.
    pub(crate) fn advance(&mut self) -> bool {
        let before = (self.map, self.players);
        if self.map_since.elapsed() >= MAP_TIME {
            self.map = self.maps.next().unwrap_or(self.map);
            self.map_since = Instant::now();
        }
        self.players = match self.rng.below(3) {
            0 => self.players.saturating_sub(1),
            1 => self.players,
            _ => (self.players + 1).min(MAX_PLAYERS),
        };
        before != (self.map, self.players)
    }

    /// The heartbeat blob. metaserve never looks inside; this `key=value;`
    /// text is just what the `browser` example knows how to display.
    pub(crate) fn heartbeat(&self) -> String {
        format!("name={};map={};players={}/{MAX_PLAYERS}", self.name, self.map, self.players)
    }
}

/// Good enough randomness for a demo, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn from_clock() -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        // The process id tells apart publishers started at the same moment;
        // the multiplication spreads small seed differences over all bits.
        let seed = (nanos ^ u64::from(std::process::id())).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        XorShift(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
