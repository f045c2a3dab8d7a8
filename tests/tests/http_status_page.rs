//! The status page (`GET /` of `--http`) in a real headless Chromium,
//! driven through chromedriver (W3C WebDriver, spoken over plain HTTP):
//! with publishers connected to a live daemon, the rendered page lists
//! their addresses, and the same page (no reload) updates itself when one
//! leaves and another arrives.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test`, the
//! README's test command, installs them). Without them the test fails under
//! CI, and elsewhere passes with a loud "NOT RUN" that `scripts/test` lists
//! in its summary ([`metaserve_tests::cannot_run`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use metaserve_tests::{within, Daemon, TestPublisher, WAIT};
use metaserve_tokio::PublishOptions;
use serde_json::{json, Value};

/// Chromium flags that work headless, as root, in a container, offline.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
];

/// The chromium binary and chromedriver, if installed.
fn tools() -> Option<(PathBuf, PathBuf)> {
    // Debian's /usr/bin/chromium is a wrapper script; chromedriver wants the binary.
    let chromium = [Path::new("/usr/lib/chromium/chromium").to_owned()]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| metaserve_tests::on_path("chromium"))
        .or_else(|| metaserve_tests::on_path("chromium-browser"))?;
    let driver = metaserve_tests::on_path("chromedriver")?;
    Some((chromium, driver))
}

/// A chromedriver with one browser session. Dropping it ends the session
/// (which quits Chromium), then kills chromedriver.
struct Driver {
    child: tokio::process::Child,
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
    http: reqwest::Client,
}

impl Driver {
    async fn start(chromium: &Path, chromedriver: &Path) -> Driver {
        // A free port for chromedriver (it has no "print the port it picked").
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = tokio::process::Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().expect("cannot start chromedriver");
        let profile = tempfile::Builder::new().prefix("metaserve-chromium-").tempdir().unwrap();
        let mut driver = Driver { child, port, session: None, _profile: profile, http: reqwest::Client::new() };
        within("chromedriver to be ready", WAIT, async {
            loop {
                if let Ok(response) = driver.http.get(driver.url("/status")).send().await {
                    if let Ok(status) = response.json::<Value>().await {
                        if status["value"]["ready"] == true {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", driver._profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = driver.command("POST", "/session", capabilities).await;
        driver.session = Some(created["sessionId"].as_str().expect("a session id").to_owned());
        driver
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// One WebDriver command; returns its `value`.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = match &self.session {
            Some(id) => self.url(&format!("/session/{id}{path}")),
            None => self.url(path),
        };
        let request = match method {
            "POST" => self.http.post(&url).json(&body),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        };
        let response = within(&format!("WebDriver {method} {path}"), WAIT, request.send()).await.expect("WebDriver");
        let status = response.status();
        let reply: Value = response.json().await.expect("WebDriver replies JSON");
        assert!(status.is_success(), "WebDriver {method} {path} failed: {status} {reply}");
        reply["value"].clone()
    }

    async fn navigate(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    async fn script(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", json!({ "script": script, "args": [] })).await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Drop cannot await: end the session with a plain blocking request.
        if let Some(id) = self.session.take() {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                );
                let _ = stream.read(&mut [0u8; 1024]);
            }
        }
        let _ = self.child.start_kill();
    }
}

/// What the page shows now: the servers table's addresses and texts, the
/// namespaces table, and the header.
const READ_PAGE: &str = r#"
return {
  servers: Array.from(document.querySelectorAll('#servers tbody tr')).map(tr => tr.dataset.address),
  texts: Array.from(document.querySelectorAll('#servers tbody tr')).map(tr => tr.innerText),
  namespaces: Array.from(document.querySelectorAll('#namespaces tbody tr')).map(tr => tr.innerText),
  selected: document.getElementById('selected').textContent,
  uptime: document.getElementById('uptime').textContent,
  version: document.getElementById('version').textContent,
  error: document.getElementById('error').textContent,
  loads: performance.getEntriesByType('navigation').length,
  marker: window.metaserveTestMarker || null,
};
"#;

fn addresses(page: &Value) -> BTreeSet<SocketAddr> {
    page["servers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().parse().unwrap()).collect()
}

async fn wait_page(driver: &Driver, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            last = driver.script(READ_PAGE).await;
            if done(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(outcome.is_ok(), "timed out waiting for the page to show {what}; it shows {last:#}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_lists_publishers_and_updates_itself() {
    let Some((chromium, chromedriver)) = tools() else {
        metaserve_tests::cannot_run(
            "status_page_lists_publishers_and_updates_itself",
            "headless Chromium and chromedriver",
            "apt-get install chromium chromium-driver, or run scripts/test",
        );
        return;
    };
    let daemon = Daemon::start(&["--http", "127.0.0.1:0", "--update-interval", "100ms"]).await;
    let endpoints: Vec<_> = (2..=4).map(|h| daemon.endpoint(h)).collect();
    let alpha = TestPublisher::start(&daemon, &endpoints[0], PublishOptions::new("arena"), "Alpha <b>ctf</b>").await;
    let beta = TestPublisher::start(&daemon, &endpoints[1], PublishOptions::new("arena"), "Beta").await;

    let driver = Driver::start(&chromium, &chromedriver).await;
    driver.navigate(&daemon.http_url("/?ns=arena")).await;
    let page = wait_page(&driver, "both publishers", |p| addresses(p) == [alpha.address, beta.address].into()).await;
    assert_eq!(page["selected"], "arena");
    assert_eq!(page["version"], env!("CARGO_PKG_VERSION"));
    assert!(page["uptime"].as_str().unwrap().ends_with('s'), "uptime shown: {page}");
    assert_eq!(page["error"], "");
    let namespaces = page["namespaces"].as_array().unwrap();
    assert_eq!(namespaces.len(), 1);
    let row = namespaces[0].as_str().unwrap();
    assert!(row.starts_with("arena") && row.contains('2'), "namespace row: {row}");
    // Heartbeats are shown as text, never interpreted as HTML.
    let texts: Vec<&str> = page["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(texts.iter().any(|t| t.contains("Alpha <b>ctf</b>")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains(&alpha.address.to_string())), "{texts:?}");

    // The same page, not reloaded, follows the live list.
    driver.script("window.metaserveTestMarker = 'same page'; return null;").await;
    alpha.finish().await.unwrap();
    let page = wait_page(&driver, "alpha gone", |p| addresses(p) == [beta.address].into()).await;
    assert_eq!(page["marker"], "same page", "the page was reloaded instead of updating itself");
    let gamma = TestPublisher::start(&daemon, &endpoints[2], PublishOptions::new("arena"), "Gamma").await;
    let page = wait_page(&driver, "gamma arrived", |p| addresses(p) == [beta.address, gamma.address].into()).await;
    assert_eq!(page["marker"], "same page");

    if let Some(path) = std::env::var_os("METASERVE_SCREENSHOT") {
        use base64::Engine as _;
        let png = driver.command("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
    driver.command("DELETE", "", Value::Null).await;
    let mut driver = driver;
    driver.session = None;
}
