//! The game server's and the game client's driver loops.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use metaserve_proto::{Browser, BrowserEvent, ErrorCode, Publisher, PublisherEvent, Resume, Server, Welcome};
use quinn::{
    ConnectError, Connection, ConnectionError, ReadError, RecvStream, Runtime, SendStream, VarInt, WriteError,
};

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
    /// No connection could be started at all (an unusable server name or
    /// address, an endpoint without a client configuration or shutting
    /// down): quinn's reason. Only the reconnect helpers ([`Reconnect`](crate::Reconnect))
    /// connect for you; with your own connections you see quinn's error.
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    /// The QUIC handshake did not complete within the connect timeout of a
    /// [`Reconnect`](crate::Reconnect): nothing answers at the server's address (yet).
    #[error("no answer from the meta server within {0:?}")]
    ConnectTimeout(Duration),
}

impl ClientError {
    /// Whether retrying later on a new connection may succeed: the one
    /// place that decides which ends of a session the reconnect helpers
    /// ([`Reconnect`](crate::Reconnect)) retry with backoff and which they return.
    ///
    /// **Transient** (retried):
    ///
    /// | error | why |
    /// |---|---|
    /// | connection timed out or reset, [`ConnectTimeout`](ClientError::ConnectTimeout), [`StreamEnded`](ClientError::StreamEnded) | the network or the server went away; a reset is what a restarted server answers for a connection it no longer knows |
    /// | a QUIC close or transport error without a TLS alert (e.g. `CONNECTION_REFUSED` from a server busy with handshakes), CIDs exhausted | QUIC gave up on this connection, not on this client |
    /// | `SHUTTING_DOWN` | the server is stopping, typically to restart |
    /// | `SERVER_FULL`, `IP_LIMIT`, `NAMESPACE_LIMIT` | a capacity limit that frees up as other sessions end |
    /// | `HANDSHAKE_TIMEOUT` | this connection was too slow to say Hello; the next one may not be |
    /// | `HEARTBEAT_TIMEOUT` | heartbeats did not arrive in time (a network stall); a new session re-sends the blob |
    /// | `NO_ERROR` | the server ended the session without blaming the client |
    /// | a code this version does not know | the protocol asks receivers to treat it as a generic error; the backoff bounds the cost of retrying one that turns out final, while giving up on one that was temporary would take a game off the list until someone restarts it |
    ///
    /// **Final** (returned to the caller):
    ///
    /// | error | why |
    /// |---|---|
    /// | `UNAUTHORIZED`, `BANNED` | the operator's decision about this client; only new configuration changes it |
    /// | `INVALID_NAMESPACE`, `UNSUPPORTED_VERSION` | the client's own settings or version; every retry would send the same Hello |
    /// | `BLOB_TOO_LARGE`, `FRAME_TOO_LARGE`, `LIST_TOO_LARGE` | a size that does not fit the limits, and would be sent or received again |
    /// | `PROTOCOL_VIOLATION`, [`Protocol`](ClientError::Protocol) | a bug on one side that a new connection would repeat |
    /// | `REPLACED` | another instance took over this entry's address: retrying would evict it, and it would evict us back, forever (`docs/PROTOCOL.md` §6.2) |
    /// | a TLS failure (a QUIC close with a TLS alert: an untrusted certificate, no common ALPN), QUIC version mismatch | the server is not the one this client trusts or can speak to |
    /// | the connection closed locally, [`Connect`](ClientError::Connect) | this program closed it, or cannot connect at all: its own doing |
    ///
    /// ```
    /// use metaserve_quinn::{ClientError, ErrorCode};
    ///
    /// let shutting_down = ClientError::Rejected { code: ErrorCode::SHUTTING_DOWN, reason: "server shutting down".into() };
    /// assert!(shutting_down.is_transient());
    /// let replaced = ClientError::Rejected { code: ErrorCode::REPLACED, reason: "replaced".into() };
    /// assert!(!replaced.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Rejected { code, .. } => code_is_transient(*code),
            ClientError::ConnectionLost(error) => match error {
                ConnectionError::TimedOut | ConnectionError::Reset | ConnectionError::CidsExhausted => true,
                ConnectionError::ConnectionClosed(close) => !is_tls_alert(close.error_code.into()),
                ConnectionError::TransportError(error) => !is_tls_alert(error.code.into()),
                // Converted to Rejected by `From`; classified by its code if built by hand.
                ConnectionError::ApplicationClosed(close) => {
                    code_is_transient(ErrorCode(close.error_code.into_inner()))
                }
                ConnectionError::VersionMismatch | ConnectionError::LocallyClosed => false,
            },
            ClientError::Protocol(error) => code_is_transient(error.code()),
            ClientError::StreamEnded | ClientError::ConnectTimeout(_) => true,
            ClientError::Connect(error) => matches!(error, ConnectError::CidsExhausted),
        }
    }

    /// The code to close a connection with after this error: the
    /// protocol's code for an error this side detected, else `NO_ERROR`
    /// (the server ended the session, or the connection is gone already).
    pub(crate) fn close_code(&self) -> ErrorCode {
        match self {
            ClientError::Protocol(error) => error.code(),
            _ => ErrorCode::NO_ERROR,
        }
    }
}

/// See [`ClientError::is_transient`] for the reason behind each code.
fn code_is_transient(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::UNAUTHORIZED
            | ErrorCode::BANNED
            | ErrorCode::INVALID_NAMESPACE
            | ErrorCode::UNSUPPORTED_VERSION
            | ErrorCode::BLOB_TOO_LARGE
            | ErrorCode::FRAME_TOO_LARGE
            | ErrorCode::LIST_TOO_LARGE
            | ErrorCode::PROTOCOL_VIOLATION
            | ErrorCode::REPLACED
    )
}

/// QUIC transport error codes 0x100–0x1ff carry a TLS alert (RFC 9001 §4.8).
fn is_tls_alert(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

/// Closes `connection` after a session on it failed with `error`.
pub(crate) fn close_after(connection: &Connection, error: &ClientError) {
    let code = error.close_code();
    let reason = if code == ErrorCode::NO_ERROR { String::new() } else { error.to_string() };
    connection.close(VarInt::from_u64(code.0).unwrap_or(VarInt::MAX), reason.as_bytes());
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

/// How long a client that said Goodbye waits for the server to close.
pub(crate) const GOODBYE_LINGER: Duration = Duration::from_secs(2);

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
    publish_session(runtime, connection, options, heartbeats, &mut false).await
}

/// [`publish`], also setting `welcomed` once the server's Welcome arrived
/// (a reconnecting publisher resets its backoff after such a session).
pub(crate) async fn publish_session<S>(
    runtime: Arc<dyn Runtime>,
    connection: &Connection,
    options: PublishOptions,
    heartbeats: S,
    welcomed: &mut bool,
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
                            PublisherEvent::Accepted(welcome) => {
                                *welcomed = true;
                                match welcome.publisher {
                                    Some(info) => tracing::info!(address = %info.address, id = info.id, "publishing"),
                                    None => tracing::info!("publishing"),
                                }
                            }
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

/// Reads the next chunk of the session stream into `browser`.
pub(crate) fn poll_browser_input(
    cx: &mut Context<'_>,
    recv: &mut RecvStream,
    browser: &mut Browser,
) -> Poll<Result<(), ClientError>> {
    // Chunks as quinn received them: no read buffer, no copy.
    let chunk = std::task::ready!(pin!(recv.read_chunk(usize::MAX, true)).poll(cx))?;
    let chunk = chunk.ok_or(ClientError::StreamEnded)?;
    browser.handle_input(Instant::now(), &chunk.bytes)?;
    Poll::Ready(Ok(()))
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
    let _ = browser.poll_transmit(Instant::now(), &mut hello);
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
        poll_browser_input(cx, &mut self.recv, &mut self.browser)
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
        let _ = self.browser.poll_transmit(Instant::now(), &mut goodbye);
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
