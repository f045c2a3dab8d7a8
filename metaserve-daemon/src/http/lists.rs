//! `GET /v1/namespaces/{ns}/servers`: a namespace's list as JSON, cached.
//!
//! With thousands of publishers the namespace's revision moves every
//! millisecond, so a cache keyed by revision alone never hits, and each
//! request copied and serialized the whole list (3 MB for 5,000 entries):
//! a few downloaders in a loop kept every core busy. Here a changed
//! namespace's body is rebuilt at most once per [`MAX_AGE`], the lifetime its
//! responses already give clients and CDNs (`Cache-Control: max-age=1`), and
//! single-flight: requests arriving during a build wait for it rather than
//! start their own. Small lists, cheap to build, are rebuilt sooner, in
//! proportion to their size (at most [`BUILD_BUDGET`] bytes of JSON per
//! namespace per `MAX_AGE`), so that they stay as fresh as before. A body
//! stays in use for as long as its namespace does not change. Serving it is
//! a refcount clone of its `Bytes`. Its ETag names the revision it was built
//! at, so it stays truthful when the namespace has moved on since.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use metaserve_tokio::EntryInfo;
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::Serialize;

use super::{json_response, not_modified, Clock, Http};

/// How old a served body may be (when the namespace has changed since it
/// was built): the `max-age` of the responses.
pub(super) const MAX_AGE: Duration = Duration::from_secs(1);

/// Bytes of JSON a namespace's list may be rebuilt into per [`MAX_AGE`]: a
/// list this large or larger is rebuilt at most once per `MAX_AGE`, one a
/// tenth of the size after a tenth of it. Serializing 256 KiB takes about a
/// millisecond.
const BUILD_BUDGET: usize = 256 * 1024;

/// Namespaces whose body is kept; the cache is emptied when full. As many as
/// the registry allows by default, so that polling every namespace does not
/// cycle it.
const CACHED_LISTS: usize = 1024;

/// The built bodies, per namespace.
#[derive(Debug, Default)]
pub(super) struct ListCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One namespace's body, and the lock its builders take turns at.
#[derive(Debug, Default)]
struct Slot {
    built: Mutex<Option<Arc<Built>>>,
    building: tokio::sync::Mutex<()>,
}

/// A serialized list.
#[derive(Debug)]
struct Built {
    /// The namespace's revision the body shows.
    revision: u64,
    etag: HeaderValue,
    body: Bytes,
    /// When its entries were copied from the registry.
    at: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ListCache {
    fn slot(&self, namespace: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(namespace) {
            return slot.clone();
        }
        if slots.len() >= CACHED_LISTS {
            slots.clear();
        }
        slots.entry(namespace.to_owned()).or_default().clone()
    }

    /// Drops the body of a namespace that no longer exists.
    fn forget(&self, namespace: &str) {
        lock(&self.slots).remove(namespace);
    }
}

impl Slot {
    /// The body, if it shows `revision` (or newer), or is too young to be
    /// rebuilt although the namespace has changed since.
    fn usable(&self, revision: u64, now: Instant) -> Option<Arc<Built>> {
        let built = lock(&self.built).clone()?;
        (built.revision >= revision || now.saturating_duration_since(built.at) < built.min_age()).then_some(built)
    }
}

impl Built {
    /// How long this body is served after its namespace changed: its share
    /// of the build budget.
    fn min_age(&self) -> Duration {
        MAX_AGE.mul_f64((self.body.len() as f64 / BUILD_BUDGET as f64).min(1.0))
    }
}

/// `"<epoch>-<revision>"`: the body is a function of the two (every change
/// to an entry moves the namespace's revision, and times come from a fixed
/// anchor).
fn etag(epoch: u64, revision: Option<u64>) -> HeaderValue {
    let tag = match revision {
        Some(revision) => format!("\"{epoch:x}-{revision}\""),
        None => format!("\"{epoch:x}-none\""),
    };
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"none\""))
}

pub(super) async fn servers(
    State(http): State<Arc<Http>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Response {
    let epoch = http.server.epoch();
    let Some(revision) = http.server.namespace_revision(&namespace) else {
        http.lists.forget(&namespace);
        return empty(&http, &namespace, epoch, &headers);
    };
    let current = etag(epoch, Some(revision));
    if not_modified(&headers, &current) {
        return json_response(&headers, current, Bytes::new());
    }
    let slot = http.lists.slot(&namespace);
    if let Some(built) = slot.usable(revision, Instant::now()) {
        return json_response(&headers, built.etag.clone(), built.body.clone());
    }
    let _building = slot.building.lock().await;
    // Built by the request this one waited for?
    if let Some(built) = slot.usable(revision, Instant::now()) {
        return json_response(&headers, built.etag.clone(), built.body.clone());
    }
    let at = Instant::now();
    let Some((revision, entries)) = http.server.entries(&namespace) else {
        return empty(&http, &namespace, epoch, &headers);
    };
    // Sized like the body it replaces: one allocation in the common case.
    let capacity = lock(&slot.built).as_ref().map_or(0, |b| b.body.len() + b.body.len() / 8);
    let body = serialize(
        &ListJson { namespace: &namespace, epoch, revision, entries: &entries, clock: &http.clock },
        capacity,
    );
    tracing::debug!(
        namespace,
        entries = entries.len(),
        bytes = body.len(),
        took = ?at.elapsed(),
        "list serialized for HTTP"
    );
    drop(entries);
    http.stats.list_built();
    let built = Arc::new(Built { revision, etag: etag(epoch, Some(revision)), body, at });
    *lock(&slot.built) = Some(built.clone());
    json_response(&headers, built.etag.clone(), built.body.clone())
}

/// The list of a namespace nobody uses: empty, and not worth caching.
fn empty(http: &Http, namespace: &str, epoch: u64, headers: &HeaderMap) -> Response {
    let etag = etag(epoch, None);
    let body = if not_modified(headers, &etag) {
        Bytes::new()
    } else {
        serialize(&ListJson { namespace, epoch, revision: 0, entries: &[], clock: &http.clock }, 0)
    };
    json_response(headers, etag, body)
}

fn serialize(list: &ListJson<'_>, capacity: usize) -> Bytes {
    let mut out = Vec::with_capacity(capacity);
    // Serializing strings and numbers into a Vec cannot fail.
    if serde_json::to_writer(&mut out, list).is_err() {
        out.clear();
    }
    Bytes::from(out)
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `{"namespace", "epoch", "revision", "servers": [...]}`, written straight
/// from the registry's entries: no intermediate strings per entry.
struct ListJson<'a> {
    namespace: &'a str,
    epoch: u64,
    /// The namespace's revision: the list equals the namespace at it.
    revision: u64,
    entries: &'a [EntryInfo],
    clock: &'a Clock,
}

/// A value written as a JSON string through its `Display`.
struct Text<T>(T);

impl<T: Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// The registry epoch in hex: a JSON number would lose its low bits.
struct Hex(u64);

impl Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl Serialize for ListJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut list = serializer.serialize_struct("ServersJson", 4)?;
        list.serialize_field("namespace", self.namespace)?;
        list.serialize_field("epoch", &Text(Hex(self.epoch)))?;
        list.serialize_field("revision", &self.revision)?;
        list.serialize_field("servers", &Servers { entries: self.entries, clock: self.clock })?;
        list.end()
    }
}

struct Servers<'a> {
    entries: &'a [EntryInfo],
    clock: &'a Clock,
}

impl Serialize for Servers<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.entries.len()))?;
        for entry in self.entries {
            seq.serialize_element(&ServerJson { entry, clock: self.clock })?;
        }
        seq.end()
    }
}

/// One server: `address`, `port_declared` (true if the game server declared
/// its port, false if it is the port its connection came from), `updated`
/// (RFC 3339 UTC) and `updated_unix_ms` (when this version arrived),
/// `revision`, `blob_base64`, and `blob_text` (the blob if it is UTF-8, else null).
struct ServerJson<'a> {
    entry: &'a EntryInfo,
    clock: &'a Clock,
}

impl Serialize for ServerJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entry = self.entry;
        let updated = self.clock.wall(entry.changed);
        let address: SocketAddr = entry.address;
        let blob: &[u8] = &entry.blob;
        let mut server = serializer.serialize_struct("ServerJson", 7)?;
        server.serialize_field("address", &address)?;
        server.serialize_field("port_declared", &entry.port_declared)?;
        server.serialize_field("updated", &Text(humantime::format_rfc3339_millis(updated)))?;
        server.serialize_field("updated_unix_ms", &unix_millis(updated))?;
        server.serialize_field("revision", &entry.revision)?;
        server.serialize_field(
            "blob_base64",
            &Text(base64::display::Base64Display::new(blob, &base64::engine::general_purpose::STANDARD)),
        )?;
        server.serialize_field("blob_text", &std::str::from_utf8(blob).ok())?;
        server.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_window_is_the_advertised_max_age() {
        assert!(super::super::CACHE_CONTROL.ends_with(&format!("max-age={}", MAX_AGE.as_secs())));
    }

    #[test]
    fn a_body_is_usable_while_fresh_or_young() {
        let slot = Slot::default();
        let at = Instant::now();
        assert!(slot.usable(1, at).is_none(), "nothing built yet");
        let body = Bytes::from(vec![b' '; 2 * BUILD_BUDGET]);
        *lock(&slot.built) = Some(Arc::new(Built { revision: 5, etag: etag(1, Some(5)), body, at }));
        assert!(slot.usable(5, at + Duration::from_secs(3600)).is_some(), "unchanged: forever");
        assert!(slot.usable(9, at + MAX_AGE / 2).is_some(), "changed, but young");
        assert!(slot.usable(9, at + MAX_AGE).is_none(), "changed and as old as max-age");

        // A list a tenth of the budget may be rebuilt after a tenth of max-age.
        let body = Bytes::from(vec![b' '; BUILD_BUDGET / 10]);
        *lock(&slot.built) = Some(Arc::new(Built { revision: 5, etag: etag(1, Some(5)), body, at }));
        assert!(slot.usable(9, at + MAX_AGE / 20).is_some());
        assert!(slot.usable(9, at + MAX_AGE / 9).is_none());
    }

    #[test]
    fn etags_name_the_epoch_and_revision() {
        assert_eq!(etag(0xab, Some(7)), "\"ab-7\"");
        assert_eq!(etag(0xab, None), "\"ab-none\"");
    }
}
