//! The harness of metaserve's end-to-end tests: the real `metaserve-daemon`
//! binary as a child process, driven over real quinn connections on loopback.
//!
//! - [`Daemon`] starts the binary in development mode on `127.0.0.1:0`,
//!   reads the bound address and the certificate fingerprint from its
//!   stdout, logs its stderr to a file (printed when a test fails), reads its
//!   RSS, terminates it gracefully with SIGTERM, and kills it on drop.
//! - Client endpoints bind to distinct loopback addresses (`127.0.0.2`,
//!   `127.0.0.3`, ...; Linux routes all of `127.0.0.0/8` to `lo`), so each
//!   simulates a different host and per-IP limits apply per endpoint.
//! - [`TestPublisher`] runs `metaserve_tokio::publish` with a channel-fed
//!   heartbeat stream; [`wait_synced`] drives a browse until its list, at a
//!   `Synced` point, satisfies a condition; [`RawClient`] speaks the wire
//!   protocol by hand, for clients that misbehave.
//! - [`nats::NatsServer`] starts a real `nats-server` with JetStream for
//!   the cluster tests.
//!
//! The daemon binary is not built from here (cargo holds the build lock
//! while tests run): `cargo build -p metaserve-daemon` first, or run
//! `cargo test --workspace`, which builds it for the daemon's own tests.
//! Every wait is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod nats;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_daemon::announce::Announcement;
use metaserve_proto::frame::{Frame, FrameType, Hello, Role, PROTOCOL_VERSION};
use metaserve_proto::{DecodeError, FrameDecoder};
use metaserve_tokio::tls::Fingerprint;
use metaserve_tokio::{browse, publish, Browse, BrowseOptions, BrowserEvent, ClientError, ErrorCode, PublishOptions};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest any single step may take before a test fails: generous,
/// because the machine may be small and busy with other builds.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test with `what` after `limit`.
pub async fn within<F: Future>(what: &str, limit: Duration, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// The loopback address `127.0.0.<n>`: one simulated host per `n`.
pub fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Reports that `test` cannot run on this machine because `what` is
/// missing (`install` says how to get it). Under CI (`CI` set) that fails
/// the test: a green CI run must mean every test really ran. Elsewhere the
/// test is to return without failing; this says so on stderr and, when
/// `METASERVE_SKIPPED` names a file (as `scripts/test` sets it), adds a line
/// there, which the script lists in its summary.
pub fn cannot_run(test: &str, what: &str, install: &str) {
    let line = format!("{test}: missing {what} ({install})");
    assert!(std::env::var_os("CI").is_none(), "cannot run under CI: {line}");
    // Written to the process's stderr itself, not through eprintln!, which
    // the test harness captures and hides for a test that passes.
    {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "\nNOT RUN: {line}");
    }
    if let Some(path) = std::env::var_os("METASERVE_SKIPPED") {
        use std::io::Write as _;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
        if let Err(e) = file.and_then(|mut f| writeln!(f, "{line}")) {
            eprintln!("cannot record the skipped test: {e}");
        }
    }
}

/// The file `name` in a directory of `PATH`, if there is one.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Where the daemon binary is: `$METASERVE_DAEMON`, or next to the test
/// executables' directory (`target/<profile>/metaserve-daemon`).
pub fn daemon_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("METASERVE_DAEMON") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    // Test executables live in target/<profile>/deps/.
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(format!("metaserve-daemon{}", std::env::consts::EXE_SUFFIX)));
    match path {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "the metaserve-daemon binary was not found next to {}: run `cargo build -p metaserve-daemon` \
             (same profile as the tests) before `cargo test -p metaserve-tests`, or set METASERVE_DAEMON",
            exe.display()
        ),
    }
}

/// A running `metaserve-daemon` child process.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    client_config: quinn::ClientConfig,
    log: PathBuf,
    dir: tempfile::TempDir,
    status: Option<ExitStatus>,
    http: Option<SocketAddr>,
    /// The arguments after the harness's own, for a restart.
    args: Vec<String>,
    with_config: bool,
}

/// A started daemon process and what it announced.
struct Launched {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    http: Option<SocketAddr>,
}

/// Starts the daemon in `dir` (its development certificate and key, its
/// config file, its log, appended to) listening on `listen`.
async fn launch(dir: &Path, listen: &str, args: &[String], with_config: bool) -> Launched {
    let log = dir.join("daemon.log");
    let log_file = std::fs::File::options().create(true).append(true).open(&log).expect("cannot create the daemon log");
    let mut command = Command::new(daemon_binary());
    command.arg("--listen").arg(listen).arg("--dev").arg("--dev-cert").arg(dir.join("cert.pem"));
    if with_config {
        command.arg("--config").arg(dir.join("metaserve.toml"));
    }
    let filter = std::env::var("METASERVE_TEST_LOG").unwrap_or_else(|_| "info".to_owned());
    command
        .args(args)
        .env("RUST_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .kill_on_drop(true);
    let mut child = command.spawn().expect("cannot start metaserve-daemon");
    let pid = child.id().expect("the daemon has a pid");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut announcement = Announcement::default();
    let announced = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(done) = announcement.read_line(&line) {
                return Some(done);
            }
        }
        None
    })
    .await;
    let Ok(Some((addr, fingerprint))) = announced else {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(WAIT, child.wait()).await;
        panic!(
            "the daemon did not announce its address and fingerprint ({}):\n{}",
            if announced.is_err() { "timed out" } else { "stdout ended" },
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    // Keep draining stdout: the daemon must never block on (or fail
    // writing to) a full or closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Launched { child, pid, addr, fingerprint, http: announcement.http }
}

impl Daemon {
    /// Starts the daemon with `--listen 127.0.0.1:0 --dev` plus `args`, and
    /// waits until it is listening.
    pub async fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_config(args, None).await
    }

    /// Like [`Daemon::start`], also passing `--config` with a file holding `toml`.
    pub async fn start_with_config(args: &[&str], toml: Option<&str>) -> Daemon {
        let dir =
            tempfile::Builder::new().prefix("metaserve-e2e-").tempdir().expect("cannot create a temporary directory");
        if let Some(toml) = toml {
            std::fs::write(dir.path().join("metaserve.toml"), toml).expect("cannot write the config file");
        }
        let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
        let launched = launch(dir.path(), "127.0.0.1:0", &args, toml.is_some()).await;
        let client_config = metaserve_tokio::tls::client_config_pinned(launched.fingerprint).expect("client config");
        Daemon {
            child: launched.child,
            pid: launched.pid,
            addr: launched.addr,
            fingerprint: launched.fingerprint,
            client_config,
            log: dir.path().join("daemon.log"),
            dir,
            status: None,
            http: launched.http,
            args,
            with_config: toml.is_some(),
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would, and starts it again
    /// on the same port with the same arguments, development certificate
    /// and config file; its log continues in the same file.
    pub async fn kill_and_restart(&mut self) {
        if self.status.is_none() {
            let _ = self.child.start_kill();
            within("the killed daemon to exit", WAIT, self.child.wait()).await.expect("waiting for the daemon");
        }
        let launched = launch(self.dir.path(), &self.addr.to_string(), &self.args, self.with_config).await;
        assert_eq!(launched.addr, self.addr, "the restarted daemon listens where its predecessor did");
        assert_eq!(launched.fingerprint, self.fingerprint, "--dev reuses its certificate across restarts");
        (self.child, self.pid, self.http, self.status) = (launched.child, launched.pid, launched.http, None);
    }

    /// The address the daemon listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The address of the daemon's HTTP API; start it with `--http 127.0.0.1:0`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("the daemon was started without --http")
    }

    /// `http://<http_addr><path>`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr())
    }

    /// The config file given to [`Daemon::start_with_config`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("metaserve.toml")
    }

    /// Replaces the config file's contents and sends SIGHUP to reload it.
    pub fn reload_config(&self, toml: &str) {
        std::fs::write(self.config_path(), toml).expect("cannot rewrite the config file");
        self.signal("HUP");
    }

    /// Sends signal `name` (as kill(1) spells it: HUP, TERM, ...) to the daemon.
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("cannot run kill(1)");
        assert!(sent.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits until the daemon's log contains `text`; returns the log.
    pub async fn wait_log(&self, text: &str) -> String {
        within(&format!("the daemon to log {text:?}"), WAIT, async {
            loop {
                let log = self.log();
                if log.contains(text) {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// The fingerprint of the daemon's development certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The temporary directory of this daemon (certificate, config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the daemon logged to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("cannot read the daemon's /proc status (is it still running?)");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmRSS line in /proc/<pid>/status")
    }

    /// The daemon's peak resident set size in KiB since it started: `VmHWM`
    /// from `/proc/<pid>/status`. Read it before the daemon exits.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("cannot read the daemon's /proc status (is it still running?)");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("no VmHWM line in /proc/<pid>/status")
    }

    /// CPU time (user + system) the daemon has used so far, from
    /// `/proc/<pid>/stat` (in clock ticks of 10 ms, Linux's `USER_HZ`).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .expect("cannot read the daemon's /proc stat (is it still running?)");
        // The command name (field 2) may contain spaces; fields after it are plain.
        let rest = stat.rsplit_once(')').map(|(_, rest)| rest).expect("malformed /proc/<pid>/stat");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        Duration::from_millis(ticks * 10)
    }

    /// A client endpoint on `127.0.0.<host>` (any port), trusting the daemon.
    pub fn endpoint(&self, host_n: u8) -> Endpoint {
        metaserve_tokio::client_endpoint(SocketAddr::new(host(host_n), 0), self.client_config.clone())
            .unwrap_or_else(|e| panic!("cannot bind a client endpoint on 127.0.0.{host_n}: {e}"))
    }

    /// The client configuration that trusts this daemon (the reference
    /// clients' transport settings), for tests that change them.
    pub fn client_config(&self) -> quinn::ClientConfig {
        self.client_config.clone()
    }

    /// A QUIC connection to the daemon from `endpoint`.
    pub async fn connect(&self, endpoint: &Endpoint) -> Connection {
        let connecting = endpoint.connect(self.addr, "localhost").expect("connect");
        within("QUIC handshake with the daemon", WAIT, connecting).await.expect("QUIC handshake with the daemon failed")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (at most `limit`) for the daemon to exit.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let sent = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .expect("cannot run kill(1)");
        assert!(sent.success(), "kill -TERM {} failed", self.pid);
        let status =
            within("the daemon exiting after SIGTERM", limit, self.child.wait()).await.expect("waiting for the daemon");
        self.status = Some(status);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.start_kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines.len().saturating_sub(60);
            eprintln!(
                "---- metaserve-daemon (pid {}) log, last {} lines ----\n{}",
                self.pid,
                lines.len() - tail,
                lines[tail..].join("\n")
            );
        }
    }
}

/// The channel-fed heartbeat stream `publish` consumes.
fn heartbeat_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A game server: `metaserve_tokio::publish` on its own task, fed by a channel.
#[derive(Debug)]
pub struct TestPublisher {
    /// The entry's address as browsers see it.
    pub address: SocketAddr,
    /// The publisher's connection.
    pub connection: Connection,
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

impl TestPublisher {
    /// Connects from `endpoint` and publishes `first` in `options.namespace`.
    pub async fn start(
        daemon: &Daemon,
        endpoint: &Endpoint,
        options: PublishOptions,
        first: impl Into<Bytes>,
    ) -> TestPublisher {
        let connection = daemon.connect(endpoint).await;
        TestPublisher::on(connection, endpoint, options, first)
    }

    /// Publishes on an established `connection` made from `endpoint`.
    pub fn on(
        connection: Connection,
        endpoint: &Endpoint,
        options: PublishOptions,
        first: impl Into<Bytes>,
    ) -> TestPublisher {
        let local = endpoint.local_addr().expect("endpoint address");
        let address = SocketAddr::new(local.ip(), options.declared_port.unwrap_or(local.port()));
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(first.into()).expect("fresh channel");
        let conn = connection.clone();
        let task = tokio::spawn(async move { publish(&conn, options, heartbeat_stream(rx)).await });
        TestPublisher { address, connection, tx: Some(tx), task: Some(task) }
    }

    /// Publishes a new blob.
    pub async fn set(&self, blob: impl Into<Bytes>) {
        let tx = self.tx.as_ref().expect("heartbeats already ended");
        // A send error means publish ended; its outcome tells why.
        let _ = within("queueing a heartbeat", WAIT, tx.send(blob.into())).await;
    }

    /// Publishes a new blob unless the channel is full; returns whether it was queued.
    pub fn try_set(&self, blob: impl Into<Bytes>) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.try_send(blob.into()).is_ok())
    }

    /// Ends the heartbeat stream (the publisher says Goodbye) and returns
    /// what `publish` returned.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        self.tx = None;
        self.outcome().await
    }

    /// Waits for `publish` to return, without ending the heartbeats.
    pub async fn outcome(&mut self) -> Result<(), ClientError> {
        let task = self.task.take().expect("outcome already taken");
        within("publish to return", WAIT, task).await.expect("publish task panicked")
    }

    /// Whether `publish` has returned.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for TestPublisher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts browsing `namespace` on a new connection from `endpoint`.
pub async fn start_browser(daemon: &Daemon, endpoint: &Endpoint, namespace: &str) -> (Connection, Browse) {
    let connection = daemon.connect(endpoint).await;
    let list = within("browse Welcome", WAIT, browse(&connection, BrowseOptions::new(namespace)))
        .await
        .expect("browse refused");
    (connection, list)
}

/// The list as address → blob.
pub fn listing(list: &Browse) -> BTreeMap<SocketAddr, Bytes> {
    list.servers().map(|s| (s.address, s.blob.clone())).collect()
}

/// Reads `list` until, right after a `Synced`, `done(list)` holds (checked
/// at once if the list is already synced). Fails on error, end or timeout.
pub async fn wait_synced(list: &mut Browse, what: &str, mut done: impl FnMut(&Browse) -> bool) {
    if list.is_synced() && done(list) {
        return;
    }
    within(what, WAIT, async {
        loop {
            match list.next().await {
                Some(Ok(BrowserEvent::Synced { .. })) => {
                    if done(list) {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("browse failed while waiting for {what}: {e}"),
                None => panic!("browse ended while waiting for {what}"),
            }
        }
    })
    .await;
}

/// Reads `list` until it ends; returns the error it ended with.
pub async fn browse_end(list: &mut Browse) -> Option<ClientError> {
    within("the browse to end", WAIT, async {
        loop {
            match list.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
}

/// Asserts that `result` is a rejection with `code`.
pub fn assert_rejected<T: std::fmt::Debug>(result: Result<T, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Rejected { code: got, reason }) => {
            assert_eq!(got, code, "rejected with {got} ({reason}), expected {code}")
        }
        other => panic!("expected a rejection with {code}, got {other:?}"),
    }
}

/// Waits for `connection` to be closed by the daemon; returns the
/// application error code and reason it was closed with.
pub async fn close_code(connection: &Connection) -> (ErrorCode, String) {
    match within("the daemon to close the connection", WAIT, connection.closed()).await {
        ConnectionError::ApplicationClosed(close) => {
            (ErrorCode(close.error_code.into_inner()), String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("connection closed without an application code: {other}"),
    }
}

/// Encodes one frame.
pub fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf
}

/// A version-1 Hello.
pub fn hello<'a>(role: Role, namespace: &'a str, token: &'a [u8]) -> Frame<'a> {
    Frame::Hello(Hello { version: PROTOCOL_VERSION, role, namespace, token, declared_port: None, resume: None })
}

/// A client that speaks the wire protocol by hand on one bidirectional
/// stream, for behaviour the real clients never show.
#[derive(Debug)]
pub struct RawClient {
    /// The connection.
    pub connection: Connection,
    /// The session stream's sending half (kept open: dropping it finishes the stream).
    pub send: SendStream,
    /// The session stream's receiving half.
    pub recv: RecvStream,
    decoder: FrameDecoder,
}

impl RawClient {
    /// Connects from `endpoint` and opens the session stream (the daemon
    /// sees it once something is written on it).
    pub async fn connect(daemon: &Daemon, endpoint: &Endpoint) -> RawClient {
        let connection = daemon.connect(endpoint).await;
        let (send, recv) = within("opening a stream", WAIT, connection.open_bi()).await.expect("open_bi");
        RawClient { connection, send, recv, decoder: FrameDecoder::new(1 << 20) }
    }

    /// Writes raw bytes on the session stream.
    pub async fn write(&mut self, bytes: &[u8]) {
        within("writing to the daemon", WAIT, self.send.write_all(bytes)).await.expect("write to the daemon");
    }

    /// Writes one frame on the session stream.
    pub async fn send(&mut self, frame: &Frame<'_>) {
        self.write(&encode(frame)).await;
    }

    /// Reads until a frame of type `wanted` arrived; returns the types of
    /// every frame read, in order.
    pub async fn read_until(&mut self, wanted: FrameType) -> Vec<FrameType> {
        let RawClient { recv, decoder, .. } = self;
        within("a frame from the daemon", WAIT, async {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            while !seen.contains(&wanted) {
                let n = recv
                    .read(&mut buf)
                    .await
                    .expect("reading from the daemon")
                    .expect("the daemon finished the stream");
                decoder
                    .decode(&buf[..n], |frame| {
                        seen.push(frame.frame_type());
                        Ok::<_, DecodeError>(())
                    })
                    .expect("the daemon sent an undecodable frame");
            }
            seen
        })
        .await
    }
}

/// A heartbeat blob of exactly `len` bytes starting with `text`.
pub fn blob(text: &str, len: usize) -> Bytes {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(len.max(text.len()), b'.');
    Bytes::from(bytes)
}

/// A well-behaved publisher and browser, to show that misbehaviour around
/// them does not disturb them.
#[derive(Debug)]
pub struct Bystander {
    namespace: String,
    publisher: TestPublisher,
    list: Browse,
    _browser_connection: Connection,
    _endpoints: (Endpoint, Endpoint),
    beat: u32,
}

impl Bystander {
    /// Publishes from `127.0.0.<publisher_host>` and browses from
    /// `127.0.0.<browser_host>` in `namespace`; returns once the browser
    /// lists the publisher.
    pub async fn start(daemon: &Daemon, publisher_host: u8, browser_host: u8, namespace: &str) -> Bystander {
        let publisher_endpoint = daemon.endpoint(publisher_host);
        let browser_endpoint = daemon.endpoint(browser_host);
        let publisher =
            TestPublisher::start(daemon, &publisher_endpoint, PublishOptions::new(namespace), "bystander beat 0").await;
        let (connection, list) = start_browser(daemon, &browser_endpoint, namespace).await;
        let mut bystander = Bystander {
            namespace: namespace.to_owned(),
            publisher,
            list,
            _browser_connection: connection,
            _endpoints: (publisher_endpoint, browser_endpoint),
            beat: 0,
        };
        bystander.wait_listed("the bystander listed", Bytes::from_static(b"bystander beat 0")).await;
        bystander
    }

    /// The bystander publisher's entry address.
    pub fn address(&self) -> SocketAddr {
        self.publisher.address
    }

    /// Publishes a new blob and waits until the browser lists it; also
    /// checks that the publisher is still publishing.
    pub async fn check(&mut self, what: &str) {
        self.beat += 1;
        let expected = Bytes::from(format!("bystander beat {}", self.beat));
        self.publisher.set(expected.clone()).await;
        self.wait_listed(what, expected).await;
    }

    async fn wait_listed(&mut self, what: &str, expected: Bytes) {
        let address = self.publisher.address;
        let what = format!("{what} (bystander {address} in {})", self.namespace);
        wait_synced(&mut self.list, &what, |l| l.server(&address).is_some_and(|s| s.blob == expected)).await;
        assert!(!self.publisher.is_finished(), "{what}: the bystander's publish ended");
    }
}

/// A TCP connection to `addr` from `127.0.0.<host_n>` (any port): an HTTP
/// client that may misbehave, as one simulated host.
pub async fn tcp_from(host_n: u8, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("cannot create a TCP socket");
    socket
        .bind(SocketAddr::new(host(host_n), 0))
        .unwrap_or_else(|e| panic!("cannot bind a TCP socket on 127.0.0.{host_n}: {e}"));
    within("a TCP connection to the daemon", WAIT, socket.connect(addr)).await.expect("TCP connect to the daemon")
}

/// Reads `stream` until the daemon closes it (end of stream or reset);
/// returns the bytes that arrived. Not bounded: wrap it in [`within`].
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET path` on a new connection (`Connection: close`) from
/// `127.0.0.<host_n>` to the HTTP address `addr`: the status code and the
/// body, or `None` if the daemon closed the connection without answering.
pub async fn http_get_from(host_n: u8, addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tcp_from(host_n, addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // A refused connection may be closed before the request is even written.
    let _ = stream.write_all(request.as_bytes()).await;
    let response = within(&format!("GET {path}"), WAIT, read_until_closed(&mut stream)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let start = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((status, response[start..].to_vec()))
}

/// The value of the sample `name{labels}` (these labels, maybe among
/// others) in the Prometheus text `text`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').map_or((series, ""), |(m, rest)| (m, rest));
        let found: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        (metric == name && labels.iter().all(|label| found.contains(label))).then(|| value.parse().ok())?
    })
}

impl Daemon {
    /// The daemon's `/metrics` text, fetched from `127.0.0.<host_n>` on a
    /// connection of its own (closed after it).
    pub async fn http_metrics_from(&self, host_n: u8) -> String {
        match http_get_from(host_n, self.http_addr(), "/metrics").await {
            Some((200, body)) => String::from_utf8(body).expect("metrics are UTF-8"),
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// Waits until `/metrics` (fetched from `127.0.0.<host_n>`) has the
    /// sample `name{labels}` and `done` holds for its value; returns it.
    pub async fn wait_metric(
        &self,
        host_n: u8,
        name: &str,
        labels: &[(&str, &str)],
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        within(&format!("metric {name}{labels:?}"), WAIT, async {
            loop {
                let text = self.http_metrics_from(host_n).await;
                if let Some(value) = metric(&text, name, labels).filter(|v| done(*v)) {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }
}
