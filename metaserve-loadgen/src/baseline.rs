//! The transport baseline: raw quinn bulk throughput on loopback with the
//! very TLS and transport settings the daemon and its clients use
//! (`tls::server_config` on the sending side, `tls::client_config_pinned`
//! on the receiving side), in the daemon → browser direction.
//!
//! The sending side runs on its own two-thread tokio runtime, as the
//! daemon's does, so its CPU time can be read separately (threads named
//! [`SENDER_THREAD`]); the receivers run on the main runtime, as browsers do.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use metaserve_tokio::{tls, RegistryConfig};
use quinn::{Connection, Endpoint};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::procfs::{self, Proc};
use crate::publishers::{close_endpoints, endpoint_ip};
use crate::report::Progress;

/// Name of the sending runtime's threads (Linux keeps 15 bytes of it).
const SENDER_THREAD: &str = "ms-baseline-tx";
/// Bytes per write on the sending side.
const CHUNK: usize = 64 * 1024;

/// One measurement: `connections` bulk streams at once.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Phase {
    pub(crate) connections: usize,
    pub(crate) window_s: f64,
    /// Stream payload received, all connections together.
    pub(crate) stream_bytes: u64,
    pub(crate) stream_bytes_per_s: f64,
    /// UDP bytes received (payload plus QUIC and TLS overhead).
    pub(crate) udp_bytes_per_s: f64,
    /// CPU of the sending runtime's threads, % of one core.
    pub(crate) sender_cpu_percent: f64,
    /// CPU of the whole load generator process (sender and receivers).
    pub(crate) process_cpu_percent: f64,
}

/// Both measurements.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) one_stream: Phase,
    pub(crate) parallel: Phase,
}

/// A bulk sender: a quinn server endpoint on its own runtime.
struct Sender {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
}

impl Sender {
    fn start() -> anyhow::Result<Sender> {
        let cert = tls::DevCertificate::generate()?;
        let server_config =
            tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &RegistryConfig::default())?;
        let client_config = tls::client_config_pinned(cert.fingerprint)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SENDER_THREAD)
            .enable_all()
            .build()
            .context("starting the sender's runtime")?;
        // quinn spawns the endpoint's driver (and its connections') on the
        // runtime current when the endpoint is made.
        let endpoint = {
            let _guard = runtime.enter();
            metaserve_tokio::server_endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), server_config)
                .context("binding the baseline server")?
        };
        let accepting = endpoint.clone();
        runtime.spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(send_bulk(incoming));
            }
        });
        Ok(Sender { runtime, endpoint, client_config })
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint.local_addr().context("the baseline server's address")
    }

    fn stop(self) {
        self.endpoint.close(0u32.into(), b"done");
        self.runtime.shutdown_background();
    }
}

/// Writes 64 KiB chunks on the stream the client opens, until the client
/// goes away.
async fn send_bulk(incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else { return };
    let Ok((mut send, mut recv)) = connection.accept_bi().await else { return };
    let mut go = [0u8; 1];
    if recv.read_exact(&mut go).await.is_err() {
        return;
    }
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    while send.write_chunk(chunk.clone()).await.is_ok() {}
}

/// Receives until `stop` turns true, counting stream bytes into `counter`.
async fn receive_bulk(connection: Connection, counter: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let Ok((mut send, mut recv)) = connection.open_bi().await else { return };
    if send.write_all(&[1]).await.is_err() {
        return;
    }
    loop {
        let chunk = tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            chunk = recv.read_chunk(usize::MAX, true) => chunk,
        };
        match chunk {
            Ok(Some(chunk)) => {
                counter.fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
            }
            Ok(None) | Err(_) => break,
        }
    }
    connection.close(0u32.into(), b"done");
}

/// Measures `connections` parallel bulk streams, each on its own connection
/// from its own client endpoint (127.3.x.y), for `window` after `warmup`.
async fn phase(
    sender: &Sender,
    connections: usize,
    warmup: Duration,
    window: Duration,
    progress: &Progress,
) -> anyhow::Result<Phase> {
    let server = sender.addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut endpoints = Vec::new();
    let mut conns = Vec::new();
    let mut counters = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..connections {
        let addr = SocketAddr::new(endpoint_ip(3, k), 0);
        let endpoint = metaserve_tokio::client_endpoint(addr, sender.client_config.clone())
            .with_context(|| format!("binding a baseline client on {addr}"))?;
        let connection = tokio::time::timeout(Duration::from_secs(20), endpoint.connect(server, "localhost")?)
            .await
            .context("baseline handshake timed out")?
            .context("baseline handshake")?;
        let counter = Arc::new(AtomicU64::new(0));
        tasks.push(tokio::spawn(receive_bulk(connection.clone(), counter.clone(), stop_rx.clone())));
        counters.push(counter);
        conns.push(connection);
        endpoints.push(endpoint);
    }
    let total = || counters.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let udp = || conns.iter().map(|c| c.stats().udp_rx.bytes).sum::<u64>();
    tokio::time::sleep(warmup).await;

    let (cpu0, sender0) = (procfs::sample(Proc::Myself)?.cpu, procfs::threads_cpu(SENDER_THREAD)?);
    let (bytes0, udp0, t0) = (total(), udp(), Instant::now());
    let mut ticker = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = (bytes0, t0);
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= window {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let (bytes, now) = (total(), Instant::now());
                let rate = (bytes - last.0) as f64 / (now - last.1).as_secs_f64().max(1e-9);
                progress.line(&format!(
                    "[baseline {connections} conn {:>3.0}s/{:.0}s] {}",
                    now.duration_since(t0).as_secs_f64(),
                    window.as_secs_f64(),
                    crate::report::rate_bytes(rate),
                ));
                last = (bytes, now);
            }
            _ = tokio::time::sleep_until(t0 + window) => {}
        }
    }
    let (bytes1, udp1, wall) = (total(), udp(), t0.elapsed());
    let (cpu1, sender1) = (procfs::sample(Proc::Myself)?.cpu, procfs::threads_cpu(SENDER_THREAD)?);
    progress.done();

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(tasks)).await;
    close_endpoints(&endpoints).await;

    let secs = wall.as_secs_f64();
    Ok(Phase {
        connections,
        window_s: secs,
        stream_bytes: bytes1 - bytes0,
        stream_bytes_per_s: (bytes1 - bytes0) as f64 / secs,
        udp_bytes_per_s: (udp1 - udp0) as f64 / secs,
        sender_cpu_percent: procfs::percent(sender1.saturating_sub(sender0), wall),
        process_cpu_percent: procfs::percent(cpu1.saturating_sub(cpu0), wall),
    })
}

/// One stream, then `connections` parallel connections.
pub(crate) async fn run(
    connections: usize,
    warmup: Duration,
    window: Duration,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let sender = Sender::start()?;
    let result = async {
        let one_stream = phase(&sender, 1, warmup, window, progress).await?;
        let parallel = if connections == 1 {
            one_stream.clone()
        } else {
            phase(&sender, connections, warmup, window, progress).await?
        };
        anyhow::Ok(Report { one_stream, parallel })
    }
    .await;
    sender.stop();
    result
}

/// Only the `connections`-connection measurement (for `run --baseline`).
pub(crate) async fn parallel_only(
    connections: usize,
    warmup: Duration,
    window: Duration,
    progress: &Progress,
) -> anyhow::Result<Phase> {
    let sender = Sender::start()?;
    let result = phase(&sender, connections, warmup, window, progress).await;
    sender.stop();
    result
}
