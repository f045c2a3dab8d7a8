//! The reconnect helpers, and the tokio example publisher and browser that
//! use them, against the real daemon killed with SIGKILL and restarted on
//! the same port with the same `--dev-cert`: a browser is back (resumed or
//! re-snapshotted) soon after the restart.
//!
//! A restarted daemon keeps its certificate and its stateless-reset key, so
//! a client's next keep-alive (every 2 s) is answered with a reset, and the
//! reconnect helper's first retry (within 250 ms) finds the new daemon: about
//! 2.3 s at worst, measured in BENCHMARKS.md. The tests assert the mechanism
//! (a reset, well before the 30 s idle timeout), not that figure: the shared
//! machines they run on are too noisy for a wall-clock bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_tests::{within, Daemon, WAIT};
use metaserve_tokio::{BrowseOptions, BrowserEvent, PublishOptions, ReconnectEvent, ReconnectingBrowse};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;

/// How soon after the restarted daemon listens a browser must be back: half
/// the idle timeout, which a client that missed the reset would wait out.
const BACK_WITHIN: Duration = Duration::from_secs(15);

/// Reads `list` until, at a `Synced`, `done` holds (checked at once if the
/// list is synced already: no further `Synced` comes without a change).
async fn until_synced(list: &mut ReconnectingBrowse, what: &str, done: impl Fn(&ReconnectingBrowse) -> bool) {
    if list.is_synced() && done(list) {
        return;
    }
    within(what, WAIT, async {
        loop {
            match list.next().await {
                Some(Ok(ReconnectEvent::Browser(BrowserEvent::Synced { .. }))) if done(list) => return,
                Some(Ok(_)) => {}
                other => panic!("{what}: the browse ended with {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn reconnecting_clients_are_back_soon_after_a_sigkill_and_restart() {
    let mut daemon = Daemon::start(&[]).await;
    let publisher = metaserve_tokio::reconnect(daemon.endpoint(2), daemon.addr(), "localhost");
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    tx.send(Bytes::from_static(b"map=one")).await.unwrap();
    let heartbeats = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let publishing = tokio::spawn(async move { publisher.publish(PublishOptions::new("restart"), heartbeats).await });
    let browser = metaserve_tokio::reconnect(daemon.endpoint(3), daemon.addr(), "localhost");
    let mut list = browser.browse(BrowseOptions::new("restart"));
    let listed = |l: &ReconnectingBrowse| l.servers().any(|s| s.blob == "map=one");
    until_synced(&mut list, "the publisher listed", listed).await;

    daemon.kill_and_restart().await;
    let restarted = Instant::now();
    // Back: a session on the new daemon, and its snapshot complete.
    within("the browser back", WAIT, async {
        let mut connected = false;
        loop {
            match list.next().await {
                Some(Ok(ReconnectEvent::Connected { .. })) => connected = true,
                Some(Ok(ReconnectEvent::Browser(BrowserEvent::Synced { snapshot, .. }))) if connected => {
                    assert!(snapshot, "a restarted daemon cannot resume: a fresh snapshot");
                    return;
                }
                Some(Ok(_)) => {}
                other => panic!("the browse ended with {other:?}"),
            }
        }
    })
    .await;
    let back = restarted.elapsed();
    // The game sent nothing new: its last blob was re-sent by the helper.
    until_synced(&mut list, "the publisher listed again", listed).await;
    let republished = restarted.elapsed();
    println!("after the restart: browser back in {back:?}, publisher listed again in {republished:?}");
    assert!(back <= BACK_WITHIN, "the browser took {back:?} to be back, more than {BACK_WITHIN:?}");

    drop(tx);
    within("publish to return", WAIT, publishing).await.unwrap().unwrap();
    within("the browser's close", WAIT, list.close()).await;
}

/// A tokio example binary, built by `cargo test --workspace` (or
/// `cargo build -p metaserve-tokio --examples`) next to the test executables.
fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // Test executables live in target/<profile>/deps/, examples in target/<profile>/examples/.
    let path = exe.parent()?.parent()?.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    path.is_file().then_some(path)
}

/// An example process whose stdout is read line by line.
struct Example {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Example {
    fn start(path: PathBuf, daemon: &Daemon, args: &[&str]) -> Example {
        let server = daemon.addr().to_string();
        let fingerprint = daemon.fingerprint().to_string();
        let mut child = Command::new(path)
            .args(["--server", &server, "--fingerprint", &fingerprint, "--namespace", "examples"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start the example");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Example { child, lines }
    }

    /// Reads lines until one contains `text`; returns it.
    async fn wait_line(&mut self, text: &str) -> String {
        within(&format!("the example to print {text:?}"), WAIT, async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) if line.contains(text) => return line,
                    Ok(Some(_)) => {}
                    other => panic!("the example's output ended ({other:?}) before {text:?}"),
                }
            }
        })
        .await
    }

    /// Ctrl-C, then the exit status.
    async fn interrupt(self) -> std::process::ExitStatus {
        let Example { mut child, mut lines } = self;
        let pid = child.id().expect("running");
        let sent = std::process::Command::new("kill").arg("-INT").arg(pid.to_string()).status().expect("kill(1)");
        assert!(sent.success());
        // Drain stdout meanwhile, so the example never blocks on a full pipe.
        let drain = async { while let Ok(Some(_)) = lines.next_line().await {} };
        let (status, ()) =
            within("the example to exit after Ctrl-C", WAIT, async { tokio::join!(child.wait(), drain) }).await;
        status.expect("waiting for the example")
    }
}

#[tokio::test]
async fn the_example_browser_is_back_soon_after_a_sigkill_and_restart() {
    let (Some(publisher), Some(browser)) = (example("publisher"), example("browser")) else {
        metaserve_tests::cannot_run(
            "the_example_browser_is_back_soon_after_a_sigkill_and_restart",
            "the tokio example binaries",
            "cargo test --workspace builds them, or cargo build -p metaserve-tokio --examples",
        );
        return;
    };
    let mut daemon = Daemon::start(&[]).await;
    let mut game = Example::start(publisher, &daemon, &["--name", "Restartable", "--interval", "0.5"]);
    game.wait_line("name=Restartable").await;
    let mut list = Example::start(browser, &daemon, &[]);
    list.wait_line("Restartable").await;

    daemon.kill_and_restart().await;
    let restarted = Instant::now();
    let lost = list.wait_line("meta server lost").await;
    let back = list.wait_line("meta server back:").await;
    let elapsed = restarted.elapsed();
    println!("after the restart: {lost:?}, then {back:?} after {elapsed:?}");
    assert!(elapsed <= BACK_WITHIN, "the example browser took {elapsed:?} to be back, more than {BACK_WITHIN:?}");
    // The publisher reconnected too, and is listed again.
    game.wait_line("meta server lost").await;
    list.wait_line("Restartable").await;

    // Ctrl-C still ends both cleanly, with Goodbye.
    assert!(game.interrupt().await.success(), "the publisher exits 0 after Ctrl-C");
    assert!(list.interrupt().await.success(), "the browser exits 0 after Ctrl-C");
}
