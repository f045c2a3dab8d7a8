//! B browsers: one QUIC connection each, recording one latency sample per
//! Upsert received while the measurement window is open.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use metaserve_tokio::{browse, BrowseOptions, Browser, BrowserEvent};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::blob;
use crate::publishers::{close_endpoints, endpoint_ip};
use crate::stats::{latency_histogram, record_ns, Live};

/// What the browsers do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) count: usize,
    pub(crate) per_endpoint: usize,
    pub(crate) namespace: String,
    /// Publishers: a browser is ready once its list holds this many entries.
    pub(crate) publishers: usize,
    pub(crate) size: usize,
    pub(crate) concurrency: usize,
}

/// What one browser saw in the window.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    /// Latency of every Upsert, heartbeat handed to `publish` → event.
    pub(crate) latency: Histogram<u64>,
    /// Per batch (the Upserts before a Synced), its smallest latency: the
    /// freshest entry's, which waited least for the update interval; close
    /// to the daemon's flush → browser delay.
    pub(crate) batch_floor: Histogram<u64>,
    /// Per batch, first Upsert received → last Upsert received.
    pub(crate) batch_span: Histogram<u64>,
    /// Upserts received.
    pub(crate) upserts: u64,
    /// Their blob bytes.
    pub(crate) blob_bytes: u64,
    /// Heartbeats never seen because a newer one of the same publisher
    /// replaced them (gaps in the sequence numbers): coalescing.
    pub(crate) coalesced: u64,
    /// Entries removed (publishers lost during the window).
    pub(crate) removes: u64,
    /// Resets (the browser fell behind the tombstones).
    pub(crate) resets: u64,
    /// How the browse ended, if not by the load generator.
    pub(crate) error: Option<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: latency_histogram(),
            batch_floor: latency_histogram(),
            batch_span: latency_histogram(),
            upserts: 0,
            blob_bytes: 0,
            coalesced: 0,
            removes: 0,
            resets: 0,
            error: None,
        }
    }
}

impl Tally {
    /// Adds `other` into `self`.
    pub(crate) fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.batch_floor.add(&other.batch_floor);
        let _ = self.batch_span.add(&other.batch_span);
        self.upserts += other.upserts;
        self.blob_bytes += other.blob_bytes;
        self.coalesced += other.coalesced;
        self.removes += other.removes;
        self.resets += other.resets;
        if self.error.is_none() {
            self.error.clone_from(&other.error);
        }
    }
}

/// The running browsers.
#[derive(Debug)]
pub(crate) struct Browsers {
    endpoints: Vec<Endpoint>,
    connections: Vec<Connection>,
    tasks: Vec<JoinHandle<Tally>>,
}

/// Connects every browser and starts reading its list; each reads until
/// `stop` turns true, then says Goodbye and returns its [`Tally`].
pub(crate) async fn start(
    plan: &Plan,
    server: SocketAddr,
    client_config: quinn::ClientConfig,
    live: &Arc<Live>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Browsers> {
    let endpoints = (0..plan.count.div_ceil(plan.per_endpoint))
        .map(|k| {
            let addr = SocketAddr::new(endpoint_ip(2, k), 0);
            metaserve_tokio::client_endpoint(addr, client_config.clone())
                .with_context(|| format!("binding a browser endpoint on {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut connecting = futures_util::stream::iter(0..plan.count)
        .map(|i| {
            let endpoint = endpoints.get(i / plan.per_endpoint).cloned();
            async move {
                let endpoint = endpoint.context("browser endpoint")?;
                endpoint
                    .connect(server, "localhost")
                    .context("connecting a browser")?
                    .await
                    .with_context(|| format!("QUIC handshake of browser {i}"))
            }
        })
        .buffer_unordered(plan.concurrency);
    let mut browsers = Browsers { endpoints: endpoints.clone(), connections: Vec::new(), tasks: Vec::new() };
    while let Some(connection) = connecting.next().await {
        let connection = connection?;
        live.browsers_connected.fetch_add(1, Ordering::Relaxed);
        let task = run(connection.clone(), plan.clone(), live.clone(), stop.clone());
        browsers.tasks.push(tokio::spawn(task));
        browsers.connections.push(connection);
    }
    Ok(browsers)
}

/// One browser.
async fn run(connection: Connection, plan: Plan, live: Arc<Live>, mut stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let options = BrowseOptions {
        max_entries: (plan.publishers + 1024).max(65_536),
        max_frame_size: (plan.size + 1024).max(64 * 1024 + 256),
        ..BrowseOptions::new(plan.namespace.clone())
    };
    let mut list = match browse(&connection, options).await {
        Ok(list) => list,
        Err(e) => {
            live.browsers_failed.fetch_add(1, Ordering::Relaxed);
            live.error(format!("browse: {e}"));
            tally.error = Some(e.to_string());
            return tally;
        }
    };
    if let Some(welcome) = list.welcome() {
        live.set_welcome(welcome);
    }
    let mut batch = Batch::default();
    // Last sequence number seen per publisher, to count coalesced beats.
    let mut last_seq: Vec<Option<u32>> = vec![None; plan.publishers];
    let mut snapshot_done = false;
    let mut ready = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            event = list.next() => event,
        };
        match event {
            Some(Ok(BrowserEvent::Upsert(server))) => {
                let received = blob::now_ns();
                let Some(stamp) = blob::decode(&server.blob) else { continue };
                let previous = last_seq.get_mut(stamp.publisher as usize).and_then(|slot| slot.replace(stamp.seq));
                // Snapshot contents are not deliveries of a heartbeat; a
                // delivery belongs to the window its heartbeat was sent in.
                if snapshot_done && live.in_window(stamp.sent_ns) {
                    let latency = received.saturating_sub(stamp.sent_ns);
                    record_ns(&mut tally.latency, latency);
                    tally.upserts += 1;
                    tally.blob_bytes += server.blob.len() as u64;
                    batch.add(received, latency, server.blob.len() as u64);
                    if let Some(previous) = previous {
                        tally.coalesced += u64::from(stamp.seq.wrapping_sub(previous).saturating_sub(1));
                    }
                }
            }
            Some(Ok(BrowserEvent::Synced { snapshot, .. })) => {
                snapshot_done |= snapshot;
                if !ready && list.servers().len() >= plan.publishers {
                    ready = true;
                    live.browsers_ready.fetch_add(1, Ordering::Relaxed);
                }
                batch.end(&live, &mut tally);
            }
            Some(Ok(BrowserEvent::Remove(_))) => {
                if live.measuring() {
                    tally.removes += 1;
                }
            }
            Some(Ok(BrowserEvent::Reset)) => {
                snapshot_done = false;
                tally.resets += 1;
            }
            Some(Ok(BrowserEvent::Rejected { code, reason })) => {
                tally.error = Some(format!("rejected: {code}: {reason}"));
                break;
            }
            Some(Err(e)) => {
                tally.error = Some(e.to_string());
                break;
            }
            None => {
                tally.error = Some("the browse ended".to_owned());
                break;
            }
        }
    }
    batch.end(&live, &mut tally);
    if let Some(error) = &tally.error {
        live.browsers_failed.fetch_add(1, Ordering::Relaxed);
        live.error(format!("browser: {error}"));
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), list.close()).await;
    }
    connection.close(0u32.into(), b"done");
    tally
}

/// The measured Upserts since the last Synced.
#[derive(Debug)]
struct Batch {
    /// Their latencies, flushed into `live` for the progress line.
    latency: Histogram<u64>,
    upserts: u64,
    bytes: u64,
    first_received_ns: u64,
    last_received_ns: u64,
    floor_ns: u64,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            latency: latency_histogram(),
            upserts: 0,
            bytes: 0,
            first_received_ns: 0,
            last_received_ns: 0,
            floor_ns: u64::MAX,
        }
    }
}

impl Batch {
    fn add(&mut self, received_ns: u64, latency_ns: u64, bytes: u64) {
        if self.upserts == 0 {
            self.first_received_ns = received_ns;
        }
        self.last_received_ns = received_ns;
        self.floor_ns = self.floor_ns.min(latency_ns);
        self.upserts += 1;
        self.bytes += bytes;
        record_ns(&mut self.latency, latency_ns);
    }

    /// At a Synced (and at the end): hands the batch to `live` and `tally`
    /// and starts the next one.
    fn end(&mut self, live: &Live, tally: &mut Tally) {
        if self.upserts == 0 {
            return;
        }
        live.delivered.fetch_add(self.upserts, Ordering::Relaxed);
        live.delivered_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        live.add_latencies(&self.latency);
        // A batch that ends after the window closed holds only the window's
        // oldest beats (the fresher ones were sent after it): its floor and
        // span would describe the window's edge, not the daemon.
        if live.measuring() {
            record_ns(&mut tally.batch_floor, self.floor_ns);
            record_ns(&mut tally.batch_span, self.last_received_ns.saturating_sub(self.first_received_ns));
        }
        self.latency.reset();
        self.upserts = 0;
        self.bytes = 0;
        self.floor_ns = u64::MAX;
    }
}

/// Browsers that said Hello and never read: their streams are held open,
/// unread, until [`Stalled::close`].
#[derive(Debug)]
pub(crate) struct Stalled {
    endpoints: Vec<Endpoint>,
    sessions: Vec<(Connection, quinn::SendStream, quinn::RecvStream)>,
}

/// Connects `count` browsers that say Hello and then never read, on their
/// own endpoints (127.3.x.y), once the measured browsers hold the full list.
pub(crate) async fn stall(
    plan: &Plan,
    count: usize,
    server: SocketAddr,
    client_config: quinn::ClientConfig,
) -> anyhow::Result<Stalled> {
    let per_endpoint = plan.per_endpoint.max(1);
    let endpoints = (0..count.div_ceil(per_endpoint))
        .map(|k| {
            let addr = SocketAddr::new(endpoint_ip(3, k), 0);
            metaserve_tokio::client_endpoint(addr, client_config.clone())
                .with_context(|| format!("binding a stalled-browser endpoint on {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut hello = Vec::new();
    let _ =
        Browser::new(BrowseOptions::new(plan.namespace.clone())).poll_transmit(std::time::Instant::now(), &mut hello);
    let mut sessions = Vec::with_capacity(count);
    for i in 0..count {
        let endpoint = endpoints.get(i / per_endpoint).context("stalled-browser endpoint")?;
        let connection = endpoint
            .connect(server, "localhost")
            .context("connecting a stalled browser")?
            .await
            .with_context(|| format!("QUIC handshake of stalled browser {i}"))?;
        let (mut send, recv) = connection.open_bi().await.context("opening a stalled browser's stream")?;
        send.write_all(&hello).await.context("a stalled browser's Hello")?;
        sessions.push((connection, send, recv));
    }
    Ok(Stalled { endpoints, sessions })
}

impl Stalled {
    /// Closes the stalled connections and their endpoints.
    pub(crate) async fn close(self) {
        for (connection, _, _) in &self.sessions {
            connection.close(0u32.into(), b"done");
        }
        drop(self.sessions);
        close_endpoints(&self.endpoints).await;
    }
}

impl Browsers {
    /// UDP bytes the browsers have received: the daemon's fan-out on the wire.
    pub(crate) fn udp_rx_bytes(&self) -> u64 {
        self.connections.iter().map(|c| c.stats().udp_rx.bytes).sum()
    }

    /// Client endpoints (UDP sockets) in use.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Collects every browser's tally (they stop once `stop` is true),
    /// waiting at most `limit`; returns the merged tally and how many did
    /// not finish in time.
    pub(crate) async fn finish(self, limit: Duration) -> (Tally, usize) {
        let mut total = Tally::default();
        let mut hung = 0;
        let deadline = Instant::now() + limit;
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(tally)) => total.merge(&tally),
                Ok(Err(_)) => hung += 1,
                Err(_) => {
                    task.abort();
                    hung += 1;
                }
            }
        }
        close_endpoints(&self.endpoints).await;
        (total, hung)
    }
}
