//! The daemon under load: started here as a child process, or a running one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use metaserve_daemon::announce::Announcement;
use metaserve_tokio::tls::Fingerprint;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the daemon may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the clients connect and whose process is measured.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: Fingerprint,
    /// The daemon's pid, when known (always for a daemon started here).
    pub(crate) pid: Option<u32>,
    /// What to call it in the report: the binary's path, or "external".
    pub(crate) description: String,
}

/// Finds the daemon binary: `explicit`, else `$METASERVE_DAEMON`, else next
/// to this executable, else the workspace's `target/release`, then
/// `target/debug`.
pub(crate) fn locate(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--daemon {}: no such file", path.display());
        }
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("METASERVE_DAEMON") {
        return Ok(path.into());
    }
    let name = format!("metaserve-daemon{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target");
    let candidates =
        beside.into_iter().chain([workspace.join("release").join(&name), workspace.join("debug").join(&name)]);
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "metaserve-daemon not found next to this binary nor in the workspace's target/: run \
         `cargo build --release -p metaserve-daemon`, or pass --daemon PATH, or --connect a running one"
    )
}

/// A `metaserve-daemon --dev` child process; killed if dropped.
#[derive(Debug)]
pub(crate) struct ManagedDaemon {
    child: Child,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ManagedDaemon {
    /// Starts `binary --listen 127.0.0.1:0 --dev --dev-cert <tmp> <args>`
    /// with `RUST_LOG=<log_filter>`, and waits for it to print its address
    /// and certificate fingerprint.
    pub(crate) async fn start(binary: &Path, args: &[String], log_filter: &str) -> anyhow::Result<(Self, Target)> {
        let dir = tempfile::Builder::new().prefix("metaserve-loadgen-").tempdir().context("temporary directory")?;
        let log = dir.path().join("daemon.log");
        let log_file = std::fs::File::create(&log).context("creating the daemon's log file")?;
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--dev")
            .arg("--dev-cert")
            .arg(dir.path().join("cert.pem"))
            .args(args)
            .env("RUST_LOG", log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the daemon exited at once")?;
        let stdout = child.stdout.take().context("the daemon's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(START_TIMEOUT, async {
            let mut announcement = Announcement::default();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(done) = announcement.read_line(&line) {
                    return Some(done);
                }
            }
            None
        })
        .await;
        let mut daemon = ManagedDaemon { child, pid, log, _dir: dir };
        let Ok(Some((addr, fingerprint))) = announced else {
            let _ = daemon.child.start_kill();
            let _ = tokio::time::timeout(STOP_TIMEOUT, daemon.child.wait()).await;
            bail!(
                "{} did not announce its address and fingerprint ({}); its log:\n{}",
                binary.display(),
                if announced.is_err() { "timed out" } else { "it exited" },
                daemon.log_tail(30)
            );
        };
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let target = Target { addr, fingerprint, pid: Some(pid), description: binary.display().to_string() };
        Ok((daemon, target))
    }

    /// The last `n` lines of the daemon's stderr.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines.get(lines.len().saturating_sub(n)..).unwrap_or_default().join("\n")
    }

    /// Stops the daemon gracefully (SIGTERM), killing it if it takes longer
    /// than 10 seconds.
    pub(crate) async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        // tokio only sends SIGKILL; kill(1) sends SIGTERM without unsafe code.
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if sent.is_ok_and(|s| s.success()) {
            if let Ok(status) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
                return status.context("waiting for the daemon");
            }
        }
        self.child.kill().await.context("killing the daemon")?;
        self.child.wait().await.context("waiting for the daemon")
    }
}
