//! The daemon's operator HTTP API (`--http`) against a real daemon: the JSON
//! lists match what a browser connection receives, caching headers and
//! conditional GETs, probes, and /metrics as valid Prometheus exposition
//! with the values the clients caused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use metaserve_tests::{
    assert_rejected, blob, listing, start_browser, wait_synced, within, Daemon, TestPublisher, WAIT,
};
use metaserve_tokio::{Browse, ErrorCode, PublishOptions};
use serde_json::Value;

async fn get(url: &str, etag: Option<&str>) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut request = client.get(url);
    if let Some(etag) = etag {
        request = request.header("If-None-Match", etag);
    }
    within(&format!("GET {url}"), WAIT, request.send()).await.expect("HTTP request failed")
}

async fn get_json(url: &str) -> (reqwest::header::HeaderMap, Value) {
    let response = get(url, None).await;
    assert_eq!(response.status(), 200, "GET {url}");
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    (headers, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap())
}

/// The HTTP list of `namespace` as address → the JSON object, checked
/// against the schema on the way.
fn servers_by_address(list: &Value) -> BTreeMap<SocketAddr, Value> {
    list["servers"]
        .as_array()
        .expect("servers is an array")
        .iter()
        .map(|s| {
            for (key, kind) in [
                ("address", "string"),
                ("port_declared", "bool"),
                ("updated", "string"),
                ("updated_unix_ms", "number"),
                ("revision", "number"),
                ("blob_base64", "string"),
            ] {
                let ok = match kind {
                    "string" => s[key].is_string(),
                    "bool" => s[key].is_boolean(),
                    _ => s[key].is_u64(),
                };
                assert!(ok, "server field {key} should be a {kind}: {s}");
            }
            assert!(s["blob_text"].is_string() || s["blob_text"].is_null(), "{s}");
            (s["address"].as_str().unwrap().parse().unwrap(), s.clone())
        })
        .collect()
}

/// Asserts that the HTTP list equals the browser's list, field by field.
fn assert_same_as_browser(http: &Value, list: &Browse) {
    let http = servers_by_address(http);
    let browser: BTreeMap<SocketAddr, _> = list.servers().map(|s| (s.address, s.clone())).collect();
    assert_eq!(http.keys().collect::<Vec<_>>(), browser.keys().collect::<Vec<_>>());
    for (address, server) in &browser {
        let json = &http[address];
        assert_eq!(json["port_declared"], server.port_declared, "{address}");
        assert_eq!(json["revision"], server.revision, "{address}");
        let blob = base64::engine::general_purpose::STANDARD.decode(json["blob_base64"].as_str().unwrap()).unwrap();
        assert_eq!(blob, server.blob, "{address}");
        match std::str::from_utf8(&server.blob) {
            Ok(text) => assert_eq!(json["blob_text"], text, "{address}"),
            Err(_) => assert!(json["blob_text"].is_null(), "{address}"),
        }
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lists_match_what_a_browser_sees() {
    let daemon = Daemon::start(&["--http", "127.0.0.1:0", "--update-interval", "100ms"]).await;
    let started_ms = unix_ms_now();
    let endpoints: Vec<_> = (2..=5).map(|h| daemon.endpoint(h)).collect();
    let alpha =
        TestPublisher::start(&daemon, &endpoints[0], PublishOptions::new("game"), "name=Alpha;map=q3dm17").await;
    let mut declared = PublishOptions::new("game");
    declared.declared_port = Some(27960);
    let binary = TestPublisher::start(&daemon, &endpoints[1], declared, Bytes::from_static(&[0xff, 0x00, 0x80])).await;
    let other = TestPublisher::start(&daemon, &endpoints[2], PublishOptions::new("q3 arena/ctf"), "other").await;
    let (_conn, mut list) = start_browser(&daemon, &endpoints[3], "game").await;
    wait_synced(&mut list, "both game servers", |l| listing(l).len() == 2).await;

    // The namespaces with their counts.
    let (headers, namespaces) = get_json(&daemon.http_url("/v1/namespaces")).await;
    assert_eq!(headers["cache-control"], "public, max-age=1");
    assert!(headers.contains_key("etag"));
    let names: Vec<&str> =
        namespaces["namespaces"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["game", "q3 arena/ctf"]);
    let game = &namespaces["namespaces"][0];
    assert_eq!(
        (game["publishers"].as_u64(), game["browsers"].as_u64(), game["entries"].as_u64()),
        (Some(2), Some(1), Some(2))
    );
    assert!(namespaces["epoch"].is_string());

    // The list: same entries, ports, revisions and blobs as the browser's.
    let url = daemon.http_url("/v1/namespaces/game/servers");
    let (headers, servers) = get_json(&url).await;
    assert_eq!(servers["namespace"], "game");
    assert_eq!(servers["epoch"], namespaces["epoch"]);
    assert_same_as_browser(&servers, &list);
    let by_address = servers_by_address(&servers);
    assert_eq!(by_address[&alpha.address]["blob_text"], "name=Alpha;map=q3dm17");
    assert_eq!(by_address[&binary.address]["port_declared"], true);
    assert_eq!(binary.address.port(), 27960);
    for server in by_address.values() {
        let ms = server["updated_unix_ms"].as_u64().unwrap();
        assert!(ms + 1000 >= started_ms && ms <= unix_ms_now() + 1000, "updated {ms} not around now");
        let rfc3339 = humantime_like(server["updated"].as_str().unwrap());
        assert_eq!(rfc3339, ms / 1000, "updated and updated_unix_ms disagree: {server}");
    }
    let max_rev = by_address.values().map(|s| s["revision"].as_u64().unwrap()).max().unwrap();
    assert!(servers["revision"].as_u64().unwrap() >= max_rev);

    // Caching: an ETag and a one-second lifetime; the same version answers 304.
    assert_eq!(headers["cache-control"], "public, max-age=1");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let not_modified = get(&url, Some(&etag)).await;
    assert_eq!(not_modified.status(), 304);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());
    assert_eq!(get(&url, Some(&format!("W/{etag}"))).await.status(), 304, "weak comparison");

    // A change: the old ETag no longer matches, and both views agree again.
    alpha.set("name=Alpha;map=q3dm6").await;
    wait_synced(&mut list, "alpha's new map", |l| {
        l.server(&alpha.address).is_some_and(|s| s.blob == Bytes::from_static(b"name=Alpha;map=q3dm6"))
    })
    .await;
    let changed = get(&url, Some(&etag)).await;
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"], etag.as_str());
    let servers: Value = serde_json::from_slice(&changed.bytes().await.unwrap()).unwrap();
    assert_same_as_browser(&servers, &list);

    // Namespaces are path segments, percent-decoded.
    let (_, encoded) = get_json(&daemon.http_url("/v1/namespaces/q3%20arena%2Fctf/servers")).await;
    assert_eq!(servers_by_address(&encoded).keys().copied().collect::<Vec<_>>(), [other.address]);
    // A namespace nobody uses is an empty list.
    let (_, empty) = get_json(&daemon.http_url("/v1/namespaces/nobody/servers")).await;
    assert_eq!(empty["servers"], Value::Array(Vec::new()));

    // A publisher leaving disappears from both.
    binary.finish().await.unwrap();
    wait_synced(&mut list, "the binary publisher gone", |l| listing(l).len() == 1).await;
    let (_, servers) = get_json(&url).await;
    assert_same_as_browser(&servers, &list);
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time like
/// `2024-05-06T07:08:09.123Z` (what the API writes), without a date crate.
fn humantime_like(text: &str) -> u64 {
    assert!(text.ends_with('Z') && text.len() == 24, "not RFC 3339 with milliseconds in UTC: {text}");
    let n = |range: std::ops::Range<usize>| text[range].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_status_and_page_answer() {
    let daemon = Daemon::start(&["--http", "127.0.0.1:0"]).await;
    let health = get(&daemon.http_url("/healthz"), None).await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    let ready = get(&daemon.http_url("/readyz"), None).await;
    assert_eq!(ready.status(), 200);
    let (_, status) = get_json(&daemon.http_url("/v1/status")).await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64() && status["started"].is_string());
    let page = get(&daemon.http_url("/"), None).await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<script>") && html.contains("v1/namespaces"), "{html}");
    assert_eq!(get(&daemon.http_url("/nothing-here"), None).await.status(), 404);
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))).map(
        |s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        },
    )
}

async fn fetch_metrics(daemon: &Daemon) -> prometheus_parse::Scrape {
    let response = get(&daemon.http_url("/metrics"), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_owned())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("not Prometheus text exposition");
    // The parser skips what it does not understand: every sample line must have parsed.
    let sample_lines = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count();
    assert_eq!(scrape.samples.len(), sample_lines, "some sample lines did not parse:\n{text}");
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["counter", "gauge"].contains(&kind), "{line}");
    }
    scrape
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_valid_prometheus_exposition_with_the_right_values() {
    let daemon =
        Daemon::start(&["--http", "127.0.0.1:0", "--update-interval", "100ms", "--max-blob-size", "100"]).await;
    let endpoints: Vec<_> = (2..=4).map(|h| daemon.endpoint(h)).collect();
    let publisher = TestPublisher::start(&daemon, &endpoints[0], PublishOptions::new("game"), "v1").await;
    let (_conn, mut list) = start_browser(&daemon, &endpoints[1], "game").await;
    wait_synced(&mut list, "the publisher", |l| listing(l).len() == 1).await;
    publisher.set("v2").await;
    wait_synced(&mut list, "v2", |l| l.server(&publisher.address).is_some_and(|s| &s.blob[..] == b"v2")).await;
    // One heartbeat over the limit is refused.
    let mut big = TestPublisher::start(&daemon, &endpoints[2], PublishOptions::new("game"), blob("big", 200)).await;
    assert_rejected(big.outcome().await, ErrorCode::BLOB_TOO_LARGE);

    let scraped = within("the metrics to settle", WAIT, async {
        loop {
            let scrape = fetch_metrics(&daemon).await;
            if sample(&scrape, "metaserve_connections_closed_total", &[("by", "server"), ("code", "BLOB_TOO_LARGE")])
                == Some(1.0)
            {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let scrape = scraped;
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&scrape, name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    };
    let game = [("namespace", "game")];
    assert_eq!(value("metaserve_publishers", &game), 1.0);
    assert_eq!(value("metaserve_browsers", &game), 1.0);
    assert_eq!(value("metaserve_entries", &game), 1.0);
    assert_eq!(value("metaserve_namespaces", &[]), 1.0);
    assert!(value("metaserve_heartbeats_accepted_total", &[("outcome", "applied")]) >= 2.0);
    assert!(value("metaserve_heartbeats_accepted_total", &[("outcome", "unchanged")]) >= 0.0);
    assert!(value("metaserve_heartbeats_coalesced_total", &[]) >= 0.0);
    assert_eq!(value("metaserve_heartbeats_rejected_total", &[("reason", "blob_too_large")]), 1.0);
    assert_eq!(value("metaserve_heartbeats_rejected_total", &[("reason", "protocol_violation")]), 0.0);
    assert!(value("metaserve_fanout_entries_sent_total", &[]) >= 2.0, "snapshot and delta");
    assert!(value("metaserve_received_bytes_total", &[]) > 0.0);
    assert!(value("metaserve_sent_bytes_total", &[]) > 0.0);
    assert!(value("metaserve_registry_revision", &[]) >= 2.0);
    assert_eq!(value("metaserve_connections_total", &[]), 3.0);
    assert_eq!(value("metaserve_sessions_accepted_total", &[("role", "publisher")]), 2.0);
    assert_eq!(value("metaserve_sessions_accepted_total", &[("role", "browser")]), 1.0);
    assert_eq!(value("metaserve_browser_resets_total", &[]), 0.0);
    assert_eq!(value("metaserve_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    assert!(value("process_cpu_seconds_total", &[]) > 0.0);
    assert!(value("process_open_fds", &[]) > 0.0);
    assert!(value("process_start_time_seconds", &[]) > 1.6e9);
    // Types: counters are counters, gauges gauges.
    let kind = |name: &str| scrape.samples.iter().find(|s| s.metric == name).map(|s| &s.value);
    assert!(matches!(kind("metaserve_sent_bytes_total"), Some(prometheus_parse::Value::Counter(_))));
    assert!(matches!(kind("metaserve_publishers"), Some(prometheus_parse::Value::Gauge(_))));

    // The browser leaving is seen by the client-side count.
    drop(list);
    drop(_conn);
    publisher.finish().await.unwrap();
    let scraped = within("the goodbye to be counted", WAIT, async {
        loop {
            let scrape = fetch_metrics(&daemon).await;
            if sample(&scrape, "metaserve_namespaces", &[]) == Some(0.0) {
                return scrape;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let scrape = scraped;
    assert!(sample(&scrape, "metaserve_publishers", &game).is_none(), "no stale series for a gone namespace");
    assert!(
        sample(&scrape, "metaserve_connections_closed_total", &[("by", "server"), ("code", "NO_ERROR")]).unwrap()
            >= 1.0
    );
}
