//! The operator HTTP surface (`--http`): the live lists as JSON, Prometheus
//! metrics, health and readiness probes, and a status page.
//!
//! It runs on a runtime of its own (`[http_limits] threads`, one thread by
//! default), so HTTP work never occupies the QUIC runtime's workers; the two
//! meet only at the registry's lock. Every handler holds that lock just to
//! copy out what it needs (counts, or the entries' cheap `Bytes` handles);
//! serializing happens outside it. [`server`] accepts connections within
//! their limits (counts, timeouts, request size); [`lists`] caches each
//! namespace's serialized list so that downloads of a large, constantly
//! changing list cost one serialization per second, not one per request.

mod lists;
mod server;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metaserve_tokio::MetaServerHandle;
use serde::Serialize;

pub(crate) use self::server::{serve, HttpConfig};
use crate::metrics::{self, HttpStats, Reloads};

/// How long clients and CDNs may cache the JSON lists; also how old a list
/// body may be when it is served (see [`lists`]).
const CACHE_CONTROL: &str = "public, max-age=1";

const STATUS_PAGE: &str = include_str!("../status.html");

/// Converts the registry's monotonic instants into wall-clock time with one
/// anchor taken at start, so a given instant always maps to the same time
/// (and a list's body is a function of its revision alone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    wall: SystemTime,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        Clock { instant: Instant::now(), wall: SystemTime::now() }
    }

    pub(crate) fn wall(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.instant) {
            Some(after) => self.wall + after,
            None => self.wall.checked_sub(self.instant.duration_since(at)).unwrap_or(UNIX_EPOCH),
        }
    }

    pub(crate) fn started(&self) -> SystemTime {
        self.wall
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.instant.elapsed()
    }
}

/// What the handlers share.
#[derive(Debug)]
pub(crate) struct Http {
    pub(crate) server: MetaServerHandle,
    pub(crate) clock: Clock,
    pub(crate) reloads: Arc<Reloads>,
    pub(crate) stats: Arc<HttpStats>,
    lists: lists::ListCache,
}

impl Http {
    pub(crate) fn new(server: MetaServerHandle, clock: Clock, reloads: Arc<Reloads>) -> Arc<Http> {
        let (stats, lists) = (Arc::default(), lists::ListCache::default());
        Arc::new(Http { server, clock, reloads, stats, lists })
    }
}

/// The routes.
pub(crate) fn router(http: Arc<Http>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/v1/status", get(status))
        .route("/v1/namespaces", get(namespaces))
        .route("/v1/namespaces/{namespace}/servers", get(lists::servers))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(http)
}

/// Whether `If-None-Match` lists `etag` (weak comparison, as RFC 9110 asks).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.to_str().unwrap_or_default().trim_start_matches("W/");
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == ours
        },
    )
}

/// A cacheable JSON response, or 304 if the client holds this version.
fn json_response(headers: &HeaderMap, etag: HeaderValue, body: axum::body::Bytes) -> Response {
    let fresh = not_modified(headers, &etag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { Response::new(Body::from(body)) };
    let h = response.headers_mut();
    if !fresh {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    // Public, read-only data: server-list websites may fetch it from their pages.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

fn to_json(value: &impl Serialize) -> axum::body::Bytes {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default().into()
}

#[derive(Serialize)]
struct NamespaceJson {
    name: String,
    publishers: usize,
    browsers: usize,
    entries: usize,
    revision: u64,
}

#[derive(Serialize)]
struct NamespacesJson {
    /// The registry epoch, in hex: a JSON number would lose its low bits.
    epoch: String,
    namespaces: Vec<NamespaceJson>,
}

async fn namespaces(State(http): State<Arc<Http>>, headers: HeaderMap) -> Response {
    let mut list: Vec<NamespaceJson> = http
        .server
        .namespaces()
        .into_iter()
        .map(|ns| NamespaceJson {
            name: ns.name.to_string(),
            publishers: ns.publishers,
            browsers: ns.browsers,
            entries: ns.entries,
            revision: ns.revision,
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let body = to_json(&NamespacesJson { epoch: format!("{:x}", http.server.epoch()), namespaces: list });
    // Counts change without a revision (browsers come and go): tag the body itself.
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = HeaderValue::from_str(&format!("\"n-{:016x}\"", hasher.finish()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"n\""));
    json_response(&headers, etag, body)
}

#[derive(Serialize)]
struct StatusJson {
    version: &'static str,
    started: String,
    uptime_seconds: u64,
    epoch: String,
    namespaces: usize,
    publishers: usize,
    browsers: usize,
    entries: usize,
    revision: u64,
    bans: usize,
}

async fn status(State(http): State<Arc<Http>>) -> Response {
    let stats = http.server.stats();
    let status = StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        started: humantime::format_rfc3339_seconds(http.clock.started()).to_string(),
        uptime_seconds: http.clock.uptime().as_secs(),
        epoch: format!("{:x}", http.server.epoch()),
        namespaces: stats.namespaces,
        publishers: stats.publishers,
        browsers: stats.browsers,
        entries: stats.entries,
        revision: stats.revision,
        bans: http.server.bans().len(),
    };
    let mut response = Response::new(Body::from(to_json(&status)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn metrics_text(State(http): State<Arc<Http>>) -> Response {
    let text = metrics::render(&http.server, &http.clock, &http.reloads, &http.stats);
    let mut response = Response::new(Body::from(text));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn healthz() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

/// Ready while the meta server accepts connections: not once it is shutting down.
async fn readyz(State(http): State<Arc<Http>>) -> Response {
    // Taking the registry's lock (through stats) also shows it is not wedged.
    let _ = http.server.stats();
    if http.server.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CACHE_CONTROL, "no-store")], "shutting down\n").into_response()
    } else {
        ([(header::CACHE_CONTROL, "no-store")], "ready\n").into_response()
    }
}

async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
        STATUS_PAGE.replace("{{version}}", env!("CARGO_PKG_VERSION")),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let etag = HeaderValue::from_static("\"abc-1\"");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            h
        };
        assert!(not_modified(&with("\"abc-1\""), &etag));
        assert!(not_modified(&with("W/\"abc-1\""), &etag));
        assert!(not_modified(&with("\"x\", \"abc-1\""), &etag));
        assert!(not_modified(&with("*"), &etag));
        assert!(!not_modified(&with("\"abc-2\""), &etag));
        assert!(!not_modified(&HeaderMap::new(), &etag));
    }

    #[test]
    fn the_clock_maps_instants_to_fixed_wall_times() {
        let clock = Clock::now();
        let later = clock.instant + Duration::from_millis(1500);
        assert_eq!(clock.wall(later), clock.wall + Duration::from_millis(1500));
        assert_eq!(clock.wall(later), clock.wall(later));
    }
}
