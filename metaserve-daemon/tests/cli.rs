//! The daemon binary's command line: every way to start it wrongly ends
//! with a clear message on stderr and a non-zero exit status, before it
//! serves anything.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use metaserve_tokio::tls::DevCertificate;

const DAEMON: &str = env!("CARGO_BIN_EXE_metaserve-daemon");

/// How long a daemon that should fail at once may take to do so.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the daemon with `args` and waits (bounded) for it to exit. A daemon
/// still running after the timeout is killed and the test fails.
fn run(args: &[&str]) -> Outcome {
    let mut child = Command::new(DAEMON)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the daemon");
    // Drain both pipes on threads so a chatty daemon can never block on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > EXIT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("daemon {args:?} still running after {EXIT_TIMEOUT:?}; stderr:\n{}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!("metaserve-cli-{}-{name}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path_str(&path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// Asserts a failed start: exit status `code`, nothing served, and the
/// message on stderr containing every one of `needles`.
fn assert_fails(outcome: &Outcome, code: i32, needles: &[&str]) {
    assert_eq!(outcome.status.code(), Some(code), "exit status; stderr:\n{}", outcome.stderr);
    assert!(!outcome.stdout.contains("listening"), "the daemon must not claim to listen:\n{}", outcome.stdout);
    for needle in needles {
        assert!(outcome.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", outcome.stderr);
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let outcome = run(&["--listen", "127.0.0.1:0", "--dev", "--max-blob-sise", "10"]);
    // clap's usage errors exit with 2 and name the flag.
    assert_fails(&outcome, 2, &["--max-blob-sise"]);
}

#[test]
fn invalid_flag_value_is_a_usage_error() {
    let outcome = run(&["--dev", "--entry-ttl", "soon"]);
    assert_fails(&outcome, 2, &["--entry-ttl", "soon"]);
    let outcome = run(&["--dev", "--max-publishers-per-ip", "0"]);
    assert_fails(&outcome, 2, &["--max-publishers-per-ip"]);
}

#[test]
fn missing_certificate_points_to_dev_mode() {
    let outcome = run(&["--listen", "127.0.0.1:0"]);
    assert_fails(&outcome, 1, &["no certificate", "--cert", "--key", "--dev"]);
}

#[test]
fn unreadable_certificate_names_the_file() {
    let dir = TempDir::new("unreadable");
    let cert = path_str(&dir.0.join("missing-cert.pem"));
    let key = dir.write("key.pem", "not a key\n");
    let outcome = run(&["--listen", "127.0.0.1:0", "--cert", &cert, "--key", &key]);
    assert_fails(&outcome, 1, &["error:", &cert]);

    // A file that exists but holds no certificate.
    let cert = dir.write("cert.pem", "hello\n");
    let outcome = run(&["--listen", "127.0.0.1:0", "--cert", &cert, "--key", &key]);
    assert_fails(&outcome, 1, &["error:", &cert]);
}

#[test]
fn mismatched_certificate_and_key_are_refused() {
    let dir = TempDir::new("mismatch");
    let one = DevCertificate::generate().unwrap();
    let two = DevCertificate::generate().unwrap();
    let cert = dir.write("cert.pem", &one.cert_pem);
    let key = dir.write("key.pem", &two.key_pem);
    let outcome = run(&["--listen", "127.0.0.1:0", "--cert", &cert, "--key", &key]);
    assert_fails(&outcome, 1, &["cannot be used together", &cert, &key]);
}

#[test]
fn port_in_use_is_reported() {
    let dir = TempDir::new("port");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cert = path_str(&dir.0.join("cert.pem"));
    let outcome = run(&["--listen", &addr, "--dev", "--dev-cert", &cert]);
    assert_fails(&outcome, 1, &["cannot listen on", &addr]);
    drop(taken);
}

#[test]
fn invalid_config_file_names_the_file_and_line() {
    let dir = TempDir::new("config");
    let cert = path_str(&dir.0.join("cert.pem"));
    let config = dir.write("metaserve.toml", "listen = \"127.0.0.1:0\"\n\n[limits]\nmax_blob_sise = 10\n");
    let outcome = run(&["--dev", "--dev-cert", &cert, "--config", &config]);
    assert_fails(&outcome, 1, &[&config, "line 4", "max_blob_sise"]);

    let config = dir.write("syntax.toml", "[limits]\nentry_ttl = \"soon\"\n");
    let outcome = run(&["--dev", "--dev-cert", &cert, "--config", &config]);
    assert_fails(&outcome, 1, &[&config, "line 2"]);

    let missing = path_str(&dir.0.join("nowhere.toml"));
    let outcome = run(&["--dev", "--dev-cert", &cert, "--config", &missing]);
    assert_fails(&outcome, 1, &["cannot read config file", &missing]);
}

#[test]
fn help_lists_every_limit() {
    let outcome = run(&["--help"]);
    assert!(outcome.status.success(), "{}", outcome.stderr);
    for flag in [
        "--listen",
        "--cert",
        "--key",
        "--dev",
        "--dev-cert",
        "--config",
        "--max-blob-size",
        "--heartbeat-interval",
        "--update-interval",
        "--entry-ttl",
        "--handshake-timeout",
        "--max-publishers-per-ip",
        "--max-browsers-per-ip",
        "--max-publishers",
        "--max-browsers",
        "--max-handshakes",
        "--max-handshakes-per-ip",
        "--max-handshakes-per-network",
        "--max-connecting",
        "--max-connecting-per-ip",
        "--validate-above",
        "--udp-buffer",
        "--http-threads",
        "--http-max-connections",
        "--http-max-connections-per-ip",
        "--http-header-timeout",
        "--http-idle-timeout",
        "--http-max-request-head",
        "--http-max-concurrent-requests",
        "--max-namespaces",
        "--max-namespace-len",
        "--max-tombstones",
        "--max-token-len",
    ] {
        assert!(outcome.stdout.contains(flag), "--help does not mention {flag}:\n{}", outcome.stdout);
    }
}
