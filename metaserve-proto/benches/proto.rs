//! Criterion microbenchmarks of metaserve-proto, all through the public API
//! and real wire bytes:
//!
//! - `decode`: `FrameDecoder` throughput on a realistic stream, fed in
//!   QUIC-packet-sized chunks and in one piece;
//! - `heartbeat_apply`: one heartbeat (a changed blob) applied to a registry
//!   of 1,000 and of 100,000 connected publishers, to show O(1); plus a
//!   control where only 1,000 of the 100,000 publishers heartbeat;
//! - `snapshot_10k`: a browser's whole snapshot of 10,000 entries against a
//!   plain memcpy of the same number of bytes, fresh and after churn;
//! - `delta`: a synced browser's next update after 1 % of the entries
//!   changed, per changed entry, for 1,000 and 100,000 entries, to show
//!   O(changed) rather than O(list); plus a control with 10 changed entries
//!   of 100,000.
//!
//! Run with `cargo bench -p metaserve-proto`; see `BENCHMARKS.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use metaserve_proto::frame::{Frame, Hello, Upsert};
use metaserve_proto::{
    Browser, BrowserConfig, BrowserEvent, ConnectionHandle, DecodeError, FrameDecoder, Registry, RegistryConfig, Role,
    DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION,
};

const NAMESPACE: &str = "bench";
const BLOB_LEN: usize = 256;
/// Publishers sharing one IP address (on different ports).
const PER_IP: usize = 4;
/// A stride coprime with every list size used here, so that "the next
/// publisher" is far away in memory, as with real, unordered traffic.
const STRIDE: usize = 7919;

/// A distinct, realistic address for publisher `i`: mostly IPv4, one in
/// eight IPv6, `PER_IP` publishers per address.
fn peer(i: usize) -> SocketAddr {
    let host = (i / PER_IP) as u32;
    let port = 27960 + (i % PER_IP) as u16;
    if i % 8 == 7 {
        let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (host >> 16) as u16, host as u16);
        SocketAddr::new(IpAddr::V6(ip), port)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host)), port)
    }
}

/// A 256-byte heartbeat blob, different for every (`seed`, `version`).
fn blob(seed: usize, version: u64) -> Vec<u8> {
    let text = format!("name=Bench server {seed};map=q3dm17;players=12/16;version={version};");
    let mut blob: Vec<u8> = text.bytes().cycle().take(BLOB_LEN).collect();
    blob[..8].copy_from_slice(&version.to_be_bytes());
    blob
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf
}

fn hello(role: Role) -> Vec<u8> {
    encode(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role,
        namespace: NAMESPACE,
        token: &[],
        declared_port: None,
        resume: None,
    }))
}

fn heartbeat(blob: &[u8]) -> Vec<u8> {
    encode(&Frame::Heartbeat { blob })
}

fn config(publishers: usize) -> RegistryConfig {
    RegistryConfig { max_publishers: publishers + 16, max_publishers_per_ip: PER_IP, ..RegistryConfig::default() }
}

/// A registry with `n` connected publishers, each with a 256-byte entry.
struct Fixture {
    registry: Registry,
    publishers: Vec<ConnectionHandle>,
    now: Instant,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let now = Instant::now();
        let mut registry = Registry::new(config(n), 7);
        let hello = hello(Role::Publisher);
        let mut publishers = Vec::with_capacity(n);
        let mut sink = Vec::new();
        for i in 0..n {
            let conn = registry.accept(now, peer(i)).unwrap();
            let mut input = hello.clone();
            Frame::Heartbeat { blob: &blob(i, 0) }.encode(&mut input);
            registry.handle_input(conn, now, &input).unwrap();
            sink.clear();
            while registry.poll_transmit(conn, now, &mut sink) {} // the Welcome
            publishers.push(conn);
        }
        while registry.poll_event().is_some() {}
        let stats = registry.stats();
        assert_eq!((stats.publishers, stats.entries), (n, n));
        Fixture { registry, publishers, now }
    }

    /// A browser connection that has sent its Hello.
    fn browser(&mut self) -> ConnectionHandle {
        let conn = self.registry.accept(self.now, "192.0.2.1:50000".parse().unwrap()).unwrap();
        self.registry.handle_input(conn, self.now, &hello(Role::Browser)).unwrap();
        while self.registry.poll_event().is_some() {}
        conn
    }

    /// Publisher `idx` sends a heartbeat with `blob(idx, version)`.
    fn heartbeat(&mut self, idx: usize, version: u64, frame: &mut Vec<u8>) {
        frame.clear();
        Frame::Heartbeat { blob: &blob(idx, version) }.encode(frame);
        self.registry.handle_input(self.publishers[idx], self.now, frame).unwrap();
    }

    /// Every publisher sends a new blob, in strided order: afterwards the
    /// revision order of the entries is unrelated to where they sit in
    /// memory, as on a server that has run for a while.
    fn churn(&mut self, version: u64) {
        let n = self.publishers.len();
        let mut frame = Vec::new();
        for j in 0..n {
            self.heartbeat(j * STRIDE % n, version, &mut frame);
        }
    }

    /// Drains a connection's output into `out`, the way a driver does while
    /// the stream is writable. Returns the bytes produced.
    fn drain(&mut self, conn: ConnectionHandle, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        while self.registry.poll_transmit(conn, self.now, out) {}
        out.len() - start
    }
}

/// A realistic server → browser stream: mostly Upserts with 256-byte blobs,
/// with some Removes, Synced markers and an unknown frame.
fn decode_input() -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    let mut frames = 0;
    for i in 0..4096usize {
        let revision = 1000 + i as u64;
        let address = peer(i);
        if i % 97 == 0 {
            Frame::Remove { revision, address }.encode(&mut buf);
        } else {
            let blob = blob(i, revision);
            Frame::Upsert(Upsert { revision, address, port_declared: i % 3 == 0, blob: &blob }).encode(&mut buf);
        }
        frames += 1;
        if i % 256 == 255 {
            Frame::Synced { revision }.encode(&mut buf);
            Frame::Unknown { frame_type: 0x21, payload: b"future extension" }.encode(&mut buf);
            frames += 2;
        }
    }
    (buf, frames)
}

fn decode(input: &[u8], chunk: usize) -> usize {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    let mut frames = 0;
    for piece in input.chunks(chunk) {
        decoder
            .decode(piece, |frame| {
                black_box(&frame);
                frames += 1;
                Ok::<_, DecodeError>(())
            })
            .unwrap();
    }
    assert_eq!(decoder.buffered(), 0);
    frames
}

fn bench_decode(c: &mut Criterion) {
    let (input, frames) = decode_input();
    assert_eq!(decode(&input, 1200), frames);
    assert_eq!(decode(&input, input.len()), frames);

    let mut group = c.benchmark_group("decode");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("chunks_1200", |b| b.iter(|| decode(black_box(&input), 1200)));
    group.bench_function("one_piece", |b| b.iter(|| decode(black_box(&input), input.len())));
    group.finish();
}

fn bench_heartbeat_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("heartbeat_apply");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 100_000] {
        let mut fx = Fixture::new(n);
        let before = fx.registry.stats();
        let mut applied = 0u64;
        // Publisher j of the strided order, `hot` publishers in rotation.
        // Two blobs differing from each other and from every earlier one:
        // round r of the rotation sends variant r % 2, so every heartbeat
        // really changes its entry and moves it to a new revision.
        let mut run = |name: &str, hot: usize, variants: [u64; 2]| {
            let frames = variants.map(|v| heartbeat(&blob(0, v)));
            let mut k = 0usize;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter(|| {
                    let conn = fx.publishers[(k % hot) * STRIDE % n];
                    let frame = &frames[(k / hot) % 2];
                    k += 1;
                    fx.registry.handle_input(conn, fx.now, black_box(frame)).unwrap();
                });
            });
            applied += k as u64;
        };
        // Every publisher in turn: the realistic case.
        run("all", n, [1, 2]);
        if n > 1_000 {
            // Control: the same big registry, but only 1,000 publishers
            // heartbeating, so their data stays in cache. Separates the cost
            // of list size (none expected) from that of cache misses.
            run("hot_1000", 1_000, [3, 4]);
        }
        let after = fx.registry.stats();
        assert_eq!(after.heartbeats_unchanged, before.heartbeats_unchanged, "a heartbeat left its entry unchanged");
        assert_eq!(after.heartbeats_applied - before.heartbeats_applied, applied);
        assert_eq!(after.entries, n);
    }
    group.finish();
}

/// Checks that `wire` is a complete snapshot of `entries` entries for a real
/// `Browser`.
fn check_snapshot(fx: &Fixture, wire: &[u8], entries: usize) {
    let mut browser = Browser::new(BrowserConfig { max_entries: entries, ..BrowserConfig::new(NAMESPACE) });
    let _ = browser.poll_transmit(fx.now, &mut Vec::new());
    browser.handle_input(fx.now, wire).unwrap();
    assert!(browser.is_synced());
    assert_eq!(browser.servers().count(), entries);
}

/// The whole snapshot into one pre-allocated buffer, a fresh browser
/// connection per iteration (set up and removed outside the timing).
fn snapshot_whole(fx: &mut Fixture, out: &mut Vec<u8>, total: usize, iters: u64) -> Duration {
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        let conn = fx.browser();
        out.clear();
        let start = Instant::now();
        let produced = fx.drain(conn, out);
        elapsed += start.elapsed();
        assert_eq!(black_box(produced), total);
        fx.registry.remove(conn);
    }
    elapsed
}

fn bench_snapshot(c: &mut Criterion) {
    const ENTRIES: usize = 10_000;
    let mut fx = Fixture::new(ENTRIES);
    let conn = fx.browser();
    let mut wire = Vec::new();
    let total = fx.drain(conn, &mut wire);
    fx.registry.remove(conn);
    check_snapshot(&fx, &wire, ENTRIES);

    // The same list after every entry changed once, in an order unrelated
    // to memory layout (its revisions are larger, so its bytes differ a little).
    let mut churned = Fixture::new(ENTRIES);
    churned.churn(1);
    let conn = churned.browser();
    let mut churned_wire = Vec::new();
    let churned_total = churned.drain(conn, &mut churned_wire);
    churned.registry.remove(conn);
    check_snapshot(&churned, &churned_wire, ENTRIES);

    let mut group = c.benchmark_group("snapshot_10k");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(total as u64));

    // The whole snapshot into one pre-allocated buffer: the same shape as
    // the memcpy below.
    let mut out = Vec::with_capacity(total.max(churned_total) + 64 * 1024);
    group.bench_function("poll_transmit_whole", |b| {
        b.iter_custom(|iters| snapshot_whole(&mut fx, &mut out, total, iters));
    });

    // As a driver does it: each poll_transmit call fills a reused buffer
    // that is then handed to the stream (here: dropped).
    let mut chunk = Vec::with_capacity(64 * 1024);
    group.bench_function("poll_transmit_chunked", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let conn = fx.browser();
                let start = Instant::now();
                let mut produced = 0;
                loop {
                    chunk.clear();
                    if !fx.registry.poll_transmit(conn, fx.now, &mut chunk) {
                        break;
                    }
                    produced += black_box(&chunk).len();
                }
                elapsed += start.elapsed();
                assert_eq!(produced, total);
                fx.registry.remove(conn);
            }
            elapsed
        });
    });

    // The floor: copying the same number of bytes.
    let src = wire.clone();
    let mut dst: Vec<u8> = Vec::with_capacity(total);
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.clear();
            dst.extend_from_slice(black_box(&src));
            black_box(&dst);
        });
    });

    group.throughput(Throughput::Bytes(churned_total as u64));
    group.bench_function("poll_transmit_whole_churned", |b| {
        b.iter_custom(|iters| snapshot_whole(&mut churned, &mut out, churned_total, iters));
    });
    group.finish();
}

/// A registry of `n` entries with one browser that has received its snapshot.
struct DeltaFixture {
    fx: Fixture,
    browser: ConnectionHandle,
    /// Publishers changed so far, counted along the strided order.
    changed: usize,
    /// Update rounds so far; round r sends blob version r + 1, so every
    /// change is a real one.
    round: u64,
    frame: Vec<u8>,
}

impl DeltaFixture {
    fn new(n: usize) -> Self {
        let mut fx = Fixture::new(n);
        let browser = fx.browser();
        let mut out = Vec::new();
        fx.drain(browser, &mut out);
        DeltaFixture { fx, browser, changed: 0, round: 0, frame: Vec::new() }
    }

    /// Moves to the next update interval and changes `m` entries.
    fn change(&mut self, m: usize) {
        let n = self.fx.publishers.len();
        self.fx.now += self.fx.registry.config().update_interval;
        self.round += 1;
        for _ in 0..m {
            let idx = self.changed % n * STRIDE % n;
            self.changed += 1;
            self.fx.heartbeat(idx, self.round, &mut self.frame);
        }
    }
}

fn bench_delta(c: &mut Criterion) {
    let mut group = c.benchmark_group("delta");
    group.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for n in [1_000usize, 100_000] {
        let mut d = DeltaFixture::new(n);

        // Check the bytes once: a Browser synced with the registry sees
        // exactly the changed entries.
        let mut browser = Browser::new(BrowserConfig { max_entries: n, ..BrowserConfig::new(NAMESPACE) });
        let conn = d.fx.browser();
        let mut wire = Vec::new();
        d.fx.drain(conn, &mut wire);
        d.fx.registry.remove(conn);
        let _ = browser.poll_transmit(d.fx.now, &mut Vec::new());
        browser.handle_input(d.fx.now, &wire).unwrap();
        while browser.poll_event().is_some() {}
        d.change(n / 100);
        wire.clear();
        d.fx.drain(d.browser, &mut wire);
        browser.handle_input(d.fx.now, &wire).unwrap();
        let upserts =
            std::iter::from_fn(|| browser.poll_event()).filter(|e| matches!(e, BrowserEvent::Upsert(_))).count();
        assert_eq!(upserts, n / 100);
        assert_eq!(browser.servers().count(), n);

        let mut out = Vec::with_capacity(64 * 1024 + n * 3);
        let mut run = |name: &str, changed: usize| {
            group.throughput(Throughput::Elements(changed as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        d.change(changed);
                        out.clear();
                        let start = Instant::now();
                        let produced = d.fx.drain(d.browser, &mut out);
                        elapsed += start.elapsed();
                        // An Upsert of a 256-byte blob is 270..=300 bytes; then Synced.
                        let produced = black_box(produced);
                        assert!((changed * 270..=changed * 300 + 16).contains(&produced));
                    }
                    elapsed
                });
            });
        };
        run("1pct", n / 100);
        if n > 1_000 {
            // Control: 10 changed entries, as many as 1 % of 1,000. Same
            // change count, 100 times the list.
            run("10_changed", 10);
        }
        assert_eq!(d.fx.registry.stats().entries, n);
        assert_eq!(d.fx.registry.stats().heartbeats_unchanged, 0);
    }
    group.finish();
}

/// The group `criterion_main!` runs; its generated `pub fn` stays undocumented.
#[allow(missing_docs, unreachable_pub)]
mod group {
    use super::{bench_decode, bench_delta, bench_heartbeat_apply, bench_snapshot};
    criterion::criterion_group!(benches, bench_decode, bench_heartbeat_apply, bench_snapshot, bench_delta);
}

criterion_main!(group::benches);
