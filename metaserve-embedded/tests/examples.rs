//! The examples themselves, as a game developer runs them: the
//! `embedded-publisher` and `embedded-browser` binaries against the real
//! `metaserve-daemon`, all as child processes of this runtime-free test.
//!
//! `cargo test -p metaserve-embedded` builds the examples; the daemon binary
//! must be built too (`cargo build -p metaserve-daemon`, or run
//! `cargo test --workspace`, which builds it), or named by `$METASERVE_DAEMON`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The longest any single step may take: generous, the machine may be busy.
const WAIT: Duration = Duration::from_secs(30);

/// `target/<profile>/`, where cargo puts binaries; test executables live in
/// its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    exe.parent().and_then(Path::parent).expect("test executables live in target/<profile>/deps/").to_owned()
}

fn binary(path: PathBuf, hint: &str) -> PathBuf {
    assert!(path.is_file(), "{} not found: {hint}", path.display());
    path
}

fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("METASERVE_DAEMON") {
        return path.into();
    }
    let name = format!("metaserve-daemon{}", std::env::consts::EXE_SUFFIX);
    binary(
        profile_dir().join(name),
        "run `cargo build -p metaserve-daemon` (same profile) first, or `cargo test --workspace`, \
         or set METASERVE_DAEMON",
    )
}

fn example(name: &str) -> PathBuf {
    let name = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    binary(profile_dir().join("examples").join(name), "`cargo test -p metaserve-embedded` builds the examples")
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Spawned {
    what: &'static str,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Spawned {
    fn start(what: &'static str, command: &mut Command) -> Spawned {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Spawned { what, child, lines, seen: Vec::new() }
    }

    /// Reads lines until one satisfies `wanted`; returns it.
    fn wait_line(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let limit = Instant::now() + WAIT;
        loop {
            let left = limit.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "{}: no expected line within {WAIT:?} ({e}); output so far:\n{}",
                    self.what,
                    self.seen.join("\n")
                )
            });
            println!("[{}] {line}", self.what);
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Waits for the process to exit; returns its status and every line it printed.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        let limit = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < limit, "{} did not exit within {WAIT:?}", self.what);
            thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends with the pipe.
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            println!("[{}] {line}", self.what);
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The publisher's name as the browser prints it.
const NAME: &str = "Example Server";

#[test]
fn publisher_and_browser_examples_against_the_daemon() {
    let cert = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("embedded-examples-{}.pem", std::process::id()));
    let mut daemon = Spawned::start(
        "daemon",
        Command::new(daemon_binary())
            .args(["--listen", "127.0.0.1:0", "--dev", "--dev-cert"])
            .arg(&cert)
            .args(["--heartbeat-interval", "200ms", "--update-interval", "200ms"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit()),
    );
    let listening = daemon.wait_line(|l| l.starts_with("metaserve listening on "));
    let server = listening.trim_start_matches("metaserve listening on ").trim().to_owned();
    let fingerprint = daemon.wait_line(|l| l.starts_with("SHA-256 fingerprint: "));
    let fingerprint = fingerprint.trim_start_matches("SHA-256 fingerprint: ").trim().to_owned();
    let meta = ["--server", &server, "--fingerprint", &fingerprint, "--namespace", "examples"];

    // Publishes for 3 s, one change a second, then says Goodbye.
    let mut publisher = Spawned::start(
        "publisher",
        Command::new(example("embedded-publisher")).args(meta).args(["--name", NAME, "--duration", "3"]),
    );
    let listed = publisher.wait_line(|l| l.starts_with("listed as "));
    let address = listed.trim_start_matches("listed as ").split(' ').next().unwrap().to_owned();

    // Watches until well after the Goodbye.
    let watcher =
        Spawned::start("browser", Command::new(example("embedded-browser")).args(meta).args(["--duration", "6"]));

    // --once: the first complete snapshot, then a clean exit.
    let (status, once) =
        Spawned::start("browser --once", Command::new(example("embedded-browser")).args(meta).arg("--once")).finish();
    assert!(status.success(), "browser --once exited with {status}");
    assert!(once.first().is_some_and(|l| l.starts_with("snapshot at revision ")), "no snapshot: {once:?}");
    assert!(once.iter().any(|l| l.contains(&address) && l.contains(&format!("name={NAME};"))), "{once:?}");

    let (status, published) = publisher.finish();
    assert!(status.success(), "the publisher exited with {status}");
    assert!(published.iter().filter(|l| l.starts_with("heartbeat ")).count() >= 2, "{published:?}");
    assert!(published.last().is_some_and(|l| l.starts_with("said goodbye")), "{published:?}");

    let (status, watched) = watcher.finish();
    assert!(status.success(), "the watching browser exited with {status}");
    // Each list is a header line (`... at revision R: N server(s)`) and
    // one line per entry: address, then blob.
    let mut lists: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in &watched {
        match lists.last_mut() {
            _ if line.contains(" at revision ") => lists.push((line, Vec::new())),
            Some((_, entries)) => entries.push(line.trim()),
            None => panic!("an entry before any list: {watched:?}"),
        }
    }
    let entry = |entries: &[&str]| entries.iter().find(|e| e.starts_with(&address)).map(|e| e.to_string());
    let seen: Vec<Option<String>> = lists.iter().map(|(_, entries)| entry(entries)).collect();
    assert!(seen.first().is_some_and(Option::is_some), "the snapshot lacks the publisher: {watched:?}");
    let mut versions: Vec<&String> = seen.iter().flatten().collect();
    versions.dedup();
    assert!(versions.len() >= 2, "no update of the entry seen: {watched:?}");
    let (last, entries) = lists.last().unwrap();
    assert!(last.ends_with(": 0 server(s)") && entries.is_empty(), "not removed after Goodbye: {watched:?}");

    drop(daemon);
    let _ = std::fs::remove_file(cert);
}
