//! The HTTP/1.1 server: an accept loop on hyper with every resource a client
//! can hold bounded.
//!
//! - connections: at most `max_connections` open, and `max_connections_per_ip`
//!   from one address; one over is closed as soon as it is accepted (before
//!   any byte is read) and counted.
//! - time: a client must send a whole request head within `header_timeout`
//!   of the connection opening or of its previous response (hyper's
//!   `header_read_timeout`, which also ends silent keep-alive connections);
//!   a connection on which no byte moves for `idle_timeout` while none of
//!   its requests is being handled (a client that stopped reading its
//!   response) is closed.
//! - memory: a connection buffers at most `max_request_head` bytes of its
//!   request (hyper's `max_buf_size`): a longer head gets 431 and the close.
//! - work: at most `max_concurrent_requests` requests are handled at once;
//!   the others wait for a turn.
//!
//! At shutdown, connections with no request in flight close at once (also
//! one that has not sent a whole request head: hyper alone would wait for
//! its header timeout); the others close once their response is sent.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower_service::Service as _;

use super::{router, Http};
use crate::metrics::HttpStats;

/// The HTTP server's limits, resolved from flags, file and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HttpConfig {
    /// Worker threads of the HTTP runtime.
    pub(crate) threads: NonZeroUsize,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// The most a connection buffers of its request: the request head's limit.
    pub(crate) max_request_head: usize,
    pub(crate) max_concurrent_requests: usize,
}

impl HttpConfig {
    /// The smallest `max_request_head`: hyper's initial read buffer, below
    /// which it refuses (panics on) a `max_buf_size`.
    pub(crate) const MIN_REQUEST_HEAD: usize = 8192;
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            threads: NonZeroUsize::MIN,
            max_connections: 1024,
            max_connections_per_ip: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_request_head: 16 * 1024,
            max_concurrent_requests: 64,
        }
    }
}

/// The least time between two log lines about refused connections or
/// failing accepts; the metrics count every one.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How long to wait after an accept failed for want of resources (file
/// descriptors, memory) before trying again, instead of spinning on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the API on `listener` within `config`'s limits until `shutdown`
/// resolves; then stops accepting, lets every connection finish the
/// response it is sending (the others close at once), and returns when all
/// have closed. Run it on the HTTP runtime: the connections' tasks and IO
/// belong to the runtime that runs this.
pub(crate) async fn serve(
    listener: TcpListener,
    http: Arc<Http>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_request_head.max(HttpConfig::MIN_REQUEST_HEAD));
    let shared = Arc::new(Shared {
        builder,
        router: router(http.clone()),
        turns: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        stats: http.stats.clone(),
        config,
    });
    let connections = Arc::new(Connections {
        max_total: config.max_connections,
        max_per_ip: config.max_connections_per_ip,
        open: Mutex::new(Open::default()),
        stats: http.stats.clone(),
    });
    // Every connection holds a receiver: the sender sees them all gone.
    let (stop, stopping) = watch::channel(false);
    let mut refusals = Throttled::default();
    let mut accept_errors = Throttled::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // A connection reset before it was accepted concerns that client only.
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    if let Some(since) = accept_errors.tick() {
                        tracing::warn!(failures = since, "cannot accept HTTP connections: {e}");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let admitted = match connections.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                // Dropping the stream closes it before anything is read.
                drop(stream);
                tracing::debug!(%peer, limit = refusal.reason(), "HTTP connection refused");
                if let Some(since) = refusals.tick() {
                    tracing::warn!(
                        %peer,
                        limit = refusal.reason(),
                        refused = since,
                        "refusing HTTP connections over a connection limit (logged at most once a minute; \
                         metaserve_http_connections_refused_total counts them)"
                    );
                }
                continue;
            }
        };
        // Responses are written whole: no reason to hold back a last small segment.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            shared.run(stream, peer, stopping).await;
        });
    }
    drop((listener, stopping));
    let _ = stop.send(true);
    tracing::debug!(open = stop.receiver_count(), "HTTP server stopping: waiting for open connections");
    stop.closed().await;
}

/// What every connection's task uses.
struct Shared {
    builder: http1::Builder,
    router: axum::Router,
    /// Turns at handling a request: `max_concurrent_requests` of them.
    turns: Arc<Semaphore>,
    stats: Arc<HttpStats>,
    config: HttpConfig,
}

impl Shared {
    /// Serves one connection until it ends, times out or is shut down.
    async fn run(&self, stream: TcpStream, peer: SocketAddr, mut stopping: watch::Receiver<bool>) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
        let service = {
            let (router, turns, activity) = (self.router.clone(), self.turns.clone(), activity.clone());
            service_fn(move |request: Request<Incoming>| {
                let (handling, in_flight) = (activity.handling(), activity.in_flight());
                let (mut router, turns) = (router.clone(), turns.clone());
                async move {
                    let _handling = handling;
                    // The semaphore is never closed: a permit always comes.
                    let _turn = turns.acquire_owned().await.ok();
                    let response = router.call(request).await;
                    response.map(|response| response.map(|body| Guarded { body, _in_flight: in_flight }))
                }
            })
        };
        let mut connection = std::pin::pin!(self.builder.serve_connection(io, service));
        let mut shutting_down = false;
        loop {
            tokio::select! {
                ended = connection.as_mut() => {
                    match ended {
                        Ok(()) => {}
                        Err(e) if e.is_timeout() => {
                            self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                %peer,
                                timeout = ?self.config.header_timeout,
                                "HTTP connection closed: no whole request head in time"
                            );
                        }
                        Err(e) if e.is_parse_too_large() => {
                            self.stats.too_large.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                %peer,
                                limit = self.config.max_request_head,
                                "HTTP connection closed: request head too large"
                            );
                        }
                        Err(e) => tracing::debug!(%peer, "HTTP connection ended: {e}"),
                    }
                    return;
                }
                () = activity.idle(self.config.idle_timeout) => {
                    self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, timeout = ?self.config.idle_timeout, "HTTP connection closed: idle");
                    return;
                }
                // A closed channel (the server gone) means stopping too.
                _ = stopping.wait_for(|stop| *stop), if !shutting_down => {
                    if activity.in_flight.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    // No keep-alive: the connection closes after its response.
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// Counts of open connections, in total and per client address.
struct Connections {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    stats: Arc<HttpStats>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// An open connection, counted until dropped.
struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        // An IPv4 client reaching a dual-stack listener is the same host either way.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let refusal = if open.total >= self.max_total {
            Some(Refusal::Total)
        } else if open.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            Some(Refusal::PerIp)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.stats.refused(refusal == Refusal::PerIp);
            return Err(refusal);
        }
        open.total += 1;
        *open.per_ip.entry(ip).or_insert(0) += 1;
        self.stats.opened();
        Ok(Admitted { connections: self.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_ip.remove(&self.ip);
            }
        }
        self.connections.stats.closed();
    }
}

/// Rate-limits a log line: [`Throttled::tick`] says when to write it, and
/// how many events it stands for.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    fn tick(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// When a connection last moved a byte, and whether one of its requests is
/// being handled: the idle timeout counts only the client's silence. On
/// tokio's clock, which tests can pause.
#[derive(Debug)]
struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    /// Requests whose handler runs (or waits for a turn).
    busy: AtomicUsize,
    /// Requests received whose response has not been sent whole.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Marks a request as being handled until the guard is dropped.
    fn handling(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Marks a request as in flight until the guard (held by its response's
    /// body, which hyper drops once it is sent) is dropped.
    fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once nothing has moved for `timeout` while no request was
    /// being handled.
    async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if tokio::time::Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            if self.busy.load(Ordering::Relaxed) == 0 {
                return;
            }
            // Handling a request is the server's time: it restarts the count.
            self.touch();
        }
    }
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight.
struct Guarded<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An IO that records in [`Activity`] when it moves bytes.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> Tracked<T> {
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    // hyper queues a response's body `Bytes` as they are only for vectored
    // IO; without it, it would copy every body into its write buffer.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connections(max_total: usize, max_per_ip: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max_total,
            max_per_ip,
            open: Mutex::new(Open::default()),
            stats: Arc::new(HttpStats::default()),
        })
    }

    #[test]
    fn connections_are_capped_in_total_and_per_ip() {
        let c = connections(3, 2);
        let (a, b, d): (IpAddr, IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap(), "::ffff:192.0.2.1".parse().unwrap());
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert_eq!(c.admit(d).err(), Some(Refusal::PerIp), "an IPv4-mapped address is the same host");
        let _third = c.admit(b).unwrap();
        assert_eq!(c.admit(b).err(), Some(Refusal::Total));
        drop(first);
        let _again = c.admit(a).unwrap();
        assert_eq!(c.stats.refused_per_ip.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn refusal_logs_are_throttled() {
        let mut throttled = Throttled::default();
        assert_eq!(throttled.tick(), Some(1));
        assert_eq!(throttled.tick(), None);
        assert_eq!(throttled.tick(), None);
        throttled.last = throttled.last.and_then(|t| t.checked_sub(LOG_EVERY));
        assert_eq!(throttled.tick(), Some(3), "the next line counts what it stood for");
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_only_while_no_request_is_handled() {
        let activity = Arc::new(Activity::new());
        let busy = activity.handling();
        let timeout = Duration::from_secs(5);
        let idle = tokio::time::timeout(Duration::from_secs(12), activity.idle(timeout));
        assert!(idle.await.is_err(), "busy: never idle");
        drop(busy);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(12), activity.idle(timeout)).await.unwrap();
        assert!(started.elapsed() <= timeout + Duration::from_millis(10));
    }
}
