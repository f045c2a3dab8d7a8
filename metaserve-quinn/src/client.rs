//! The game server's and the game client's driver loops.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use metaserve_proto::{Browser, BrowserEvent, ErrorCode, Publisher, PublisherEvent, Resume, Server, Welcome};
use quinn::{Connection, ConnectionError, ReadError, RecvStream, Runtime, SendStream, WriteError};

use crate::io::{race, Outbox, Timer, BUDGET};

pub use metaserve_proto::{BrowserConfig as BrowseOptions, PublisherConfig as PublishOptions};

/// Why a publish or browse session ended with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The meta server refused or ended the session, with one of the codes
    /// of `docs/PROTOCOL.md` (for example `UNAUTHORIZED`, `BLOB_TOO_LARGE`,
    /// `SHUTTING_DOWN`).
    #[error("closed by the meta server: {code}: {reason}")]
    Rejected {
        /// The application error code.
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
    /// The connection failed (timed out, reset, closed locally, ...).
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The meta server broke the protocol, or a local limit was hit (for
    /// example a heartbeat larger than the server's maximum).
    #[error("protocol error: {0}")]
    Protocol(#[from] metaserve_proto::Error),
    /// The meta server ended the session stream without closing the connection.
    #[error("the meta server ended the session stream")]
    StreamEnded,
}

impl From<ConnectionError> for ClientError {
    fn from(error: ConnectionError) -> Self {
        match error {
            ConnectionError::ApplicationClosed(close) => ClientError::Rejected {
                code: ErrorCode(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => ClientError::ConnectionLost(other),
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::ConnectionLost(e) => e.into(),
            ReadError::Reset(code) => {
                ClientError::Rejected { code: ErrorCode(code.into_inner()), reason: "stream reset".into() }
            }
            _ => ClientError::StreamEnded,
        }
    }
}

impl From<WriteError> for ClientError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::ConnectionLost(e) => e.into(),
            WriteError::Stopped(code) => {
                ClientError::Rejected { code: ErrorCode(code.into_inner()), reason: "stream stopped".into() }
            }
            _ => ClientError::StreamEnded,
        }
    }
}

/// How long a publisher that said Goodbye waits for the server to close.
const GOODBYE_LINGER: Duration = Duration::from_secs(2);

/// Publishes `heartbeats` on `connection` until the stream of heartbeats
/// ends, then says Goodbye; the server removes the entry at once.
///
/// Each item replaces the previous one if it has not been sent yet, and
/// blobs go out no faster than the server's heartbeat interval; without
/// new items the last blob is refreshed so the entry does not expire.
pub async fn publish<S>(
    runtime: Arc<dyn Runtime>,
    connection: &Connection,
    options: PublishOptions,
    heartbeats: S,
) -> Result<(), ClientError>
where
    S: Stream<Item = Bytes>,
{
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut publisher = Publisher::new(options, runtime.now());
    let mut heartbeats = pin!(heartbeats);
    let mut source_done = false;
    let mut timer = Timer::new(&*runtime);
    let mut out = Outbox::default();
    poll_fn(|cx| {
        for _ in 0..BUDGET {
            let now = runtime.now();
            let mut progressed = false;
            if !source_done {
                match heartbeats.as_mut().poll_next(cx) {
                    Poll::Ready(Some(blob)) => {
                        publisher.set_heartbeat(blob, now)?;
                        progressed = true;
                    }
                    Poll::Ready(None) => {
                        source_done = true;
                        publisher.shutdown(now);
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            match pin!(recv.read_chunk(usize::MAX, true)).poll(cx) {
                Poll::Ready(Ok(None)) => return Poll::Ready(Err(ClientError::StreamEnded)),
                Poll::Ready(Ok(Some(chunk))) => {
                    publisher.handle_input(now, &chunk.bytes)?;
                    while let Some(event) = publisher.poll_event() {
                        match event {
                            PublisherEvent::Accepted(welcome) => match welcome.publisher {
                                Some(info) => tracing::info!(address = %info.address, id = info.id, "publishing"),
                                None => tracing::info!("publishing"),
                            },
                            PublisherEvent::Rejected { code, reason } => {
                                return Poll::Ready(Err(ClientError::Rejected { code, reason }))
                            }
                        }
                    }
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
            if let Poll::Ready(Err(e)) = out.poll_flush(cx, &mut send, |b| publisher.poll_transmit(now, b)) {
                return Poll::Ready(Err(e.into()));
            }
            if publisher.is_closed() && out.is_empty() {
                return Poll::Ready(Ok(()));
            }
            // A deadline is progress only when the stream could take what it
            // produces; while output waits, the stream's writability wakes us
            // (else a server that stops reading would spin this loop).
            let next = if out.is_empty() { publisher.poll_timeout() } else { None };
            if timer.poll_at(cx, next).is_ready() {
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await?;
    let _ = send.finish();
    // The server answers Goodbye by closing the connection with NO_ERROR;
    // wait for that (briefly) so the Goodbye is not lost with a local close.
    let linger = runtime.now() + GOODBYE_LINGER;
    match race(connection.closed(), timer.sleep_until(linger)).await {
        Ok(ConnectionError::ApplicationClosed(close)) if close.error_code.into_inner() != ErrorCode::NO_ERROR.0 => {
            Err(ConnectionError::ApplicationClosed(close).into())
        }
        _ => Ok(()),
    }
}

/// A live server list: a [`Stream`] of [`BrowserEvent`]s that also offers
/// the current list. Reading happens only while the stream is polled; a
/// browse that is not polled holds the meta server back by QUIC flow
/// control, at no cost to the server.
#[derive(Debug)]
pub struct Browse {
    browser: Browser,
    send: SendStream,
    recv: RecvStream,
    ended: bool,
}

/// Starts browsing on `connection`: says Hello and waits for the Welcome.
pub async fn browse(connection: &Connection, options: BrowseOptions) -> Result<Browse, ClientError> {
    browse_with(connection, Browser::new(options)).await
}

/// Like [`browse`], with a prepared [`Browser`]: pass
/// `previous.into_browser().reconnect()` to keep the list of an earlier
/// session and receive only what changed since.
pub async fn browse_with(connection: &Connection, mut browser: Browser) -> Result<Browse, ClientError> {
    let (mut send, recv) = connection.open_bi().await?;
    let mut hello = Vec::new();
    browser.poll_transmit(Instant::now(), &mut hello);
    send.write_all(&hello).await?;
    let mut browse = Browse { browser, send, recv, ended: false };
    poll_fn(|cx| browse.poll_welcome(cx)).await?;
    Ok(browse)
}

impl Browse {
    fn poll_welcome(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        while self.browser.welcome().is_none() {
            if let Some(BrowserEvent::Rejected { code, reason }) = self.browser.poll_event() {
                return Poll::Ready(Err(ClientError::Rejected { code, reason }));
            }
            std::task::ready!(self.poll_input(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        // Chunks as quinn received them: no read buffer, no copy.
        let chunk = std::task::ready!(pin!(self.recv.read_chunk(usize::MAX, true)).poll(cx))?;
        let chunk = chunk.ok_or(ClientError::StreamEnded)?;
        self.browser.handle_input(Instant::now(), &chunk.bytes)?;
        Poll::Ready(Ok(()))
    }

    /// The current list, in no particular order.
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &Server> + '_ {
        self.browser.servers()
    }

    /// The entry for `address`, if listed.
    pub fn server(&self, address: &std::net::SocketAddr) -> Option<&Server> {
        self.browser.server(address)
    }

    /// Whether the list is a complete snapshot (a `Synced` arrived).
    pub fn is_synced(&self) -> bool {
        self.browser.is_synced()
    }

    /// Where a new session would resume from.
    pub fn resume_point(&self) -> Option<Resume> {
        self.browser.resume_point()
    }

    /// The meta server's Welcome: its limits and epoch.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.browser.welcome()
    }

    /// The state machine with the list, e.g. to resume on a new connection.
    pub fn into_browser(self) -> Browser {
        self.browser
    }

    /// Says Goodbye and finishes the session stream. The connection stays
    /// open; close it when done with it.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.browser.shutdown(Instant::now());
        let mut goodbye = Vec::new();
        self.browser.poll_transmit(Instant::now(), &mut goodbye);
        self.send.write_all(&goodbye).await?;
        let _ = self.send.finish();
        Ok(())
    }
}

impl Stream for Browse {
    type Item = Result<BrowserEvent, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.browser.poll_event() {
                Some(BrowserEvent::Rejected { code, reason }) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ClientError::Rejected { code, reason })));
                }
                Some(event) => return Poll::Ready(Some(Ok(event))),
                None if this.ended => return Poll::Ready(None),
                None => {}
            }
            if let Err(e) = std::task::ready!(this.poll_input(cx)) {
                this.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
        }
    }
}
