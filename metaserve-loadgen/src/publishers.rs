//! P publishers: one QUIC connection each, several per client endpoint,
//! each heartbeating at the configured rate with a blob that changes every
//! beat (it carries its send time).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use metaserve_tokio::{ClientError, PublishOptions};
use quinn::{Connection, Endpoint};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::blob::{self, Stamp};
use crate::stats::Live;

/// First port publishers declare; publisher `i` of an endpoint declares
/// `FIRST_PORT + i`, which keeps entries on one IP distinct.
const FIRST_PORT: u16 = 20_000;

/// The address of client endpoint `index` of a group: `127.<group>.x.y`,
/// distinct for up to 64,516 endpoints (all of 127.0.0.0/8 is loopback).
pub(crate) fn endpoint_ip(group: u8, index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, group, (index / 254) as u8, (index % 254 + 1) as u8))
}

/// What the publishers do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) count: usize,
    pub(crate) per_endpoint: usize,
    pub(crate) period: Duration,
    pub(crate) size: usize,
    pub(crate) namespace: String,
    pub(crate) concurrency: usize,
}

impl Plan {
    pub(crate) fn endpoints(&self) -> usize {
        self.count.div_ceil(self.per_endpoint)
    }
}

/// The running publishers.
#[derive(Debug)]
pub(crate) struct Publishers {
    endpoints: Vec<Endpoint>,
    connections: Vec<Connection>,
    tasks: Vec<JoinHandle<Result<(), ClientError>>>,
}

/// How the publishers ended.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ending {
    /// Said Goodbye and saw the daemon close the connection.
    pub(crate) clean: usize,
    /// Ended with an error (before or at the end).
    pub(crate) failed: usize,
    /// Still running at the teardown limit (aborted).
    pub(crate) hung: usize,
}

/// Connects every publisher (at most `plan.concurrency` handshakes at once)
/// and starts publishing on each as soon as it is connected. Heartbeats go
/// out until `stop` turns true; then each publisher says Goodbye.
pub(crate) async fn start(
    plan: &Plan,
    server: SocketAddr,
    client_config: quinn::ClientConfig,
    live: &Arc<Live>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Publishers> {
    let endpoints = (0..plan.endpoints())
        .map(|k| {
            let addr = SocketAddr::new(endpoint_ip(1, k), 0);
            metaserve_tokio::client_endpoint(addr, client_config.clone())
                .with_context(|| format!("binding a publisher endpoint on {addr}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A publisher's first beat goes out as soon as it is connected, so that
    // the browsers list everyone without waiting up to a period; after that,
    // beats are spread evenly over one period: publisher i beats at
    // start + (i / P) × period, then every period.
    let start = Instant::now();
    let mut connecting = futures_util::stream::iter(0..plan.count)
        .map(|i| {
            let endpoint = endpoints.get(i / plan.per_endpoint).cloned();
            async move {
                let endpoint = endpoint.context("publisher endpoint")?;
                let connection = endpoint
                    .connect(server, "localhost")
                    .context("connecting a publisher")?
                    .await
                    .with_context(|| format!("QUIC handshake of publisher {i}"))?;
                anyhow::Ok((i, connection))
            }
        })
        .buffer_unordered(plan.concurrency);
    let mut publishers = Publishers { endpoints: endpoints.clone(), connections: Vec::new(), tasks: Vec::new() };
    while let Some(connected) = connecting.next().await {
        let (i, connection) = connected?;
        live.publishers_connected.fetch_add(1, Ordering::Relaxed);
        let options = PublishOptions {
            declared_port: Some(FIRST_PORT + (i % plan.per_endpoint) as u16),
            ..PublishOptions::new(plan.namespace.clone())
        };
        let first = start + plan.period.mul_f64(i as f64 / plan.count as f64);
        let beats = heartbeats(i as u32, first, plan, live.clone(), stop.clone());
        let conn = connection.clone();
        let live = live.clone();
        publishers.tasks.push(tokio::spawn(async move {
            let result = metaserve_tokio::publish(&conn, options, beats).await;
            if let Err(e) = &result {
                live.publishers_failed.fetch_add(1, Ordering::Relaxed);
                live.error(format!("publisher {i}: {e}"));
            }
            result
        }));
        publishers.connections.push(connection);
    }
    Ok(publishers)
}

/// Publisher `index`'s heartbeats: a fresh stamped blob at once, then at
/// `first` and every period after it (ticks missed under load are skipped,
/// not bunched), until `stop` turns true.
fn heartbeats(
    index: u32,
    first: Instant,
    plan: &Plan,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = Bytes> {
    // The phase, moved past the beat sent at once.
    let now = Instant::now();
    let behind = now.saturating_duration_since(first).as_secs_f64();
    let first = first + plan.period.mul_f64((behind / plan.period.as_secs_f64()).ceil());
    let first = if first <= now { first + plan.period } else { first };
    let mut interval = tokio::time::interval_at(first, plan.period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let size = plan.size;
    futures_util::stream::unfold((interval, stop, 0u32), move |(mut interval, mut stop, seq)| {
        let live = live.clone();
        async move {
            let stopped = *stop.borrow()
                || (seq > 0
                    && tokio::select! {
                        biased;
                        _ = stop.wait_for(|stopped| *stopped) => true,
                        _ = interval.tick() => false,
                    });
            if stopped {
                return None;
            }
            let sent_ns = blob::now_ns();
            let blob = blob::encode(Stamp { sent_ns, publisher: index, seq }, size);
            if live.in_window(sent_ns) {
                live.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Some((blob, (interval, stop, seq.wrapping_add(1))))
        }
    })
}

impl Publishers {
    /// UDP bytes the publishers have sent (what the daemon ingests).
    pub(crate) fn udp_tx_bytes(&self) -> u64 {
        self.connections.iter().map(|c| c.stats().udp_tx.bytes).sum()
    }

    /// Client endpoints (UDP sockets) in use.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Waits, at most `limit`, for every publisher to finish (they say
    /// Goodbye once `stop` is true), then aborts the rest and closes the
    /// endpoints.
    pub(crate) async fn finish(self, limit: Duration) -> Ending {
        let mut ending = Ending::default();
        let deadline = Instant::now() + limit;
        for mut task in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(Ok(()))) => ending.clean += 1,
                Ok(_) => ending.failed += 1,
                Err(_) => {
                    task.abort();
                    ending.hung += 1;
                }
            }
        }
        close_endpoints(&self.endpoints).await;
        ending
    }
}

/// Closes `endpoints` and waits briefly for them to tell their peers.
pub(crate) async fn close_endpoints(endpoints: &[Endpoint]) {
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"load generator done");
    }
    let idle = futures_util::future::join_all(endpoints.iter().map(Endpoint::wait_idle));
    let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
}
