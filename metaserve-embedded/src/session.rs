//! One QUIC connection to a meta server, driven by hand: quinn-proto on a
//! blocking [`UdpSocket`], one loop body per [`QuicSession::step`].

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metaserve_proto::{ClientRole, Error, ErrorCode};
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint,
    EndpointConfig, Event, ReadError, StreamEvent, StreamId, Transmit, VarInt, WriteError,
};

/// Why a session ended. Once [`QuicSession::step`] has returned an error,
/// the session is over; later calls return an error again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The meta server closed the connection with an application error code
    /// (see `docs/PROTOCOL.md`): `NO_ERROR` after our Goodbye, or the code of
    /// a rejection such as `UNAUTHORIZED`, `BLOB_TOO_LARGE`, `SHUTTING_DOWN`.
    #[error("closed by the meta server: {code}: {reason}")]
    Closed {
        /// The application error code.
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
    /// The meta server broke the protocol, or a local limit was hit; the
    /// session has closed the connection with [`Error::code`].
    #[error("protocol error (connection closed with {code}): {0}", code = .0.code())]
    Protocol(Error),
    /// The connection failed: handshake refused, timed out, reset, closed
    /// locally, or closed by the server's QUIC stack.
    #[error("connection lost: {0}")]
    ConnectionLost(ConnectionError),
    /// The meta server reset or stopped the session stream with `code`
    /// without closing the connection.
    #[error("the meta server abandoned the session stream with code {code}")]
    StreamAbandoned {
        /// The stream error code.
        code: ErrorCode,
    },
    /// The meta server finished the session stream while the session was
    /// still active.
    #[error("the meta server ended the session stream")]
    StreamEnded,
    /// The meta server allows no bidirectional stream.
    #[error("the meta server allows no session stream")]
    NoStream,
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] ConnectError),
    /// The UDP socket failed.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl From<ConnectionError> for SessionError {
    fn from(error: ConnectionError) -> Self {
        match error {
            ConnectionError::ApplicationClosed(close) => SessionError::Closed {
                code: ErrorCode(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => SessionError::ConnectionLost(other),
        }
    }
}

/// Largest UDP payload; anything larger cannot arrive.
const MAX_DATAGRAM: usize = 64 * 1024;
/// Datagrams taken in per [`QuicSession::step`] before returning to the
/// caller, so that one step stays short under a flood.
const MAX_DATAGRAMS_PER_STEP: usize = 64;

/// A metaserve client session without an async runtime: one quinn-proto
/// [`Endpoint`] with one [`Connection`] and its one bidirectional session
/// stream, on a blocking [`UdpSocket`].
///
/// Call [`step`](Self::step) in a loop (or once per frame of a game loop)
/// and drain the state machine's events after each call:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Instant;
/// use metaserve_embedded::{tls, QuicSession};
/// use metaserve_proto::{Browser, BrowserConfig, BrowserEvent};
///
/// let fingerprint: tls::Fingerprint = "3A:F1:...".parse()?;
/// let config = tls::client_config_pinned(fingerprint)?;
/// let mut session = QuicSession::connect("127.0.0.1:27950".parse()?, "localhost", config)?;
/// let mut browser = Browser::new(BrowserConfig::new("demo"));
/// loop {
///     session.step(&mut browser, None)?; // transmit, wait for the socket or a deadline, take input in
///     while let Some(event) = browser.poll_event() {
///         if let BrowserEvent::Synced { .. } = event {
///             println!("{} servers", browser.servers().len());
///         }
///     }
/// }
/// # }
/// ```
///
/// Each step, in order:
///
/// 1. pulls the state machine's output with `poll_transmit`, only while the
///    stream has room; bytes the stream refused are kept, and nothing more
///    is pulled until a `Writable` event says the stream can take them;
///    once the state machine is closed (Goodbye written), finishes the stream;
/// 2. sends the connection's datagrams (`Connection::poll_transmit`);
/// 3. waits for the socket, with a read timeout up to the earliest of the
///    connection's `poll_timeout`, the state machine's `poll_timeout` (only
///    while the stream has room: its output could not go anywhere otherwise)
///    and the caller's `until`;
/// 4. feeds what arrived to `Endpoint::handle` and `Connection::handle_event`;
/// 5. calls `handle_timeout` on the connection and the state machine if due;
/// 6. drains the connection's events: opens the stream once connected,
///    reads it (`recv_stream(id).read(true)` chunks) into the state
///    machine's `handle_input`, notes `Writable`, and passes endpoint
///    events (`poll_endpoint_events`) to the endpoint;
/// 7. sends the datagrams this produced (ACKs, flow-control credit).
///
/// Output a caller causes between steps (a new heartbeat, a shutdown) goes
/// out at the start of the next step, before it waits.
#[derive(Debug)]
pub struct QuicSession {
    socket: UdpSocket,
    endpoint: Endpoint,
    handle: ConnectionHandle,
    connection: Connection,
    /// The session stream, once the handshake is done.
    stream: Option<StreamId>,
    /// Bytes pulled from the state machine and not yet accepted by the stream.
    outbox: Vec<u8>,
    written: usize,
    /// The stream refused a write; retry after a `Writable` event.
    blocked: bool,
    /// Our sending half is finished.
    finished: bool,
    /// The server finished its sending half.
    recv_ended: bool,
    /// How the connection ended, once it has.
    lost: Option<ConnectionError>,
    nonblocking: bool,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
}

impl QuicSession {
    /// Binds a UDP socket on the unspecified address of `server`'s family
    /// (any port) and starts connecting. `server_name` is checked against the
    /// certificate unless the configuration pins it
    /// ([`client_config_pinned`](crate::tls::client_config_pinned)).
    pub fn connect(server: SocketAddr, server_name: &str, config: ClientConfig) -> Result<Self, SessionError> {
        let local = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        Self::with_socket(UdpSocket::bind(local)?, server, server_name, config)
    }

    /// Starts connecting from a socket the caller bound. The session owns it
    /// and changes its blocking mode and read timeout as it goes.
    pub fn with_socket(
        socket: UdpSocket,
        server: SocketAddr,
        server_name: &str,
        config: ClientConfig,
    ) -> Result<Self, SessionError> {
        // No path MTU discovery: a std socket cannot forbid fragmentation.
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
        let (handle, connection) = endpoint.connect(Instant::now(), config, server, server_name)?;
        socket.set_nonblocking(false)?;
        Ok(QuicSession {
            socket,
            endpoint,
            handle,
            connection,
            stream: None,
            outbox: Vec::new(),
            written: 0,
            blocked: false,
            finished: false,
            recv_ended: false,
            lost: None,
            nonblocking: false,
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            send_buf: Vec::new(),
        })
    }

    /// One pass of the loop (see the type's documentation): transmit what is
    /// due, wait for the socket until the next deadline or `until`, whichever
    /// comes first, and take in what arrived. `until: None` waits only for
    /// the network and the timers; `Some(Instant::now())` never blocks.
    ///
    /// Drain the state machine's `poll_event` after each call. An error ends
    /// the session: the connection is closed (with [`Error::code`] if the
    /// state machine failed) or was closed by the server, whose application
    /// close code and reason [`SessionError::Closed`] carries.
    pub fn step<R: ClientRole + ?Sized>(&mut self, role: &mut R, until: Option<Instant>) -> Result<(), SessionError> {
        if let Some(lost) = &self.lost {
            return Err(lost.clone().into());
        }
        let now = Instant::now();
        let pulled = self.pull_output(role, now);
        self.send_datagrams(now);
        pulled?;

        let mut deadline = earliest(self.connection.poll_timeout(), until);
        if self.has_room() {
            deadline = earliest(deadline, role.poll_timeout());
        }
        self.receive(deadline)?;

        let now = Instant::now();
        if self.connection.poll_timeout().is_some_and(|at| at <= now) {
            self.connection.handle_timeout(now);
        }
        if role.poll_timeout().is_some_and(|at| at <= now) {
            role.handle_timeout(now);
        }
        let result = self.process_events(role, now);
        self.send_datagrams(now);
        result
    }

    /// Says Goodbye and waits, at most `linger`, for the server to close the
    /// connection with `NO_ERROR`; then closes it locally if the server has
    /// not. The server removes a publisher's entry at once. Keep draining
    /// events afterwards if you care about the last ones.
    pub fn goodbye<R: ClientRole + ?Sized>(&mut self, role: &mut R, linger: Duration) -> Result<(), SessionError> {
        let until = Instant::now() + linger;
        role.shutdown(Instant::now());
        loop {
            if self.lost.is_none() && (self.stream.is_none() || Instant::now() >= until) {
                self.close(ErrorCode::NO_ERROR, "goodbye");
                return Ok(());
            }
            match self.step(role, Some(until)) {
                Ok(()) => {}
                Err(SessionError::Closed { code: ErrorCode::NO_ERROR, .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection now with `code` and `reason` and sends the
    /// close. Output not yet delivered is lost; prefer [`Self::goodbye`].
    pub fn close(&mut self, code: ErrorCode, reason: &str) {
        let now = Instant::now();
        let code = VarInt::from_u64(code.0).unwrap_or(VarInt::MAX);
        self.connection.close(now, code, Bytes::copy_from_slice(reason.as_bytes()));
        self.lost.get_or_insert(ConnectionError::LocallyClosed);
        self.send_datagrams(now);
    }

    /// Whether the handshake is done and the session stream is open.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some() && self.lost.is_none()
    }

    /// Whether the connection has ended, by either side.
    pub fn is_closed(&self) -> bool {
        self.lost.is_some()
    }

    /// How the connection ended, once it has: `ApplicationClosed` carries
    /// the server's application error code and reason (`NO_ERROR`,
    /// `goodbye` after a confirmed Goodbye), `LocallyClosed` follows
    /// [`Self::close`] (or a Goodbye the server did not confirm in time).
    pub fn close_reason(&self) -> Option<&ConnectionError> {
        self.lost.as_ref()
    }

    /// The quinn-proto connection, e.g. for its `stats()` or `rtt()`.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Whether the state machine's output could go out now.
    fn has_room(&self) -> bool {
        self.stream.is_some() && !self.blocked && !self.finished
    }

    /// Writes the state machine's output into the stream while it has room.
    fn pull_output<R: ClientRole + ?Sized>(&mut self, role: &mut R, now: Instant) -> Result<(), SessionError> {
        let Some(id) = self.stream else { return Ok(()) };
        if !self.has_room() {
            return Ok(());
        }
        loop {
            if self.written == self.outbox.len() {
                self.outbox.clear();
                self.written = 0;
                if !role.poll_transmit(now, &mut self.outbox) {
                    break;
                }
            }
            let pending = self.outbox.get(self.written..).unwrap_or_default();
            match self.connection.send_stream(id).write(pending) {
                Ok(0) | Err(WriteError::Blocked) => {
                    self.blocked = true;
                    return Ok(());
                }
                Ok(n) => self.written += n,
                Err(WriteError::Stopped(code)) => return Err(self.abandoned(code)),
                Err(WriteError::ClosedStream) => return Err(self.abandoned(VarInt::from_u32(0))),
            }
        }
        if role.is_closed() {
            // Everything the state machine will ever say (its Goodbye) is in
            // the stream: finish our half, as the protocol asks.
            self.finished = true;
            let _ = self.connection.send_stream(id).finish();
        }
        Ok(())
    }

    /// The server gave up the stream: end the session.
    fn abandoned(&mut self, code: VarInt) -> SessionError {
        self.close(ErrorCode::NO_ERROR, "session stream abandoned");
        SessionError::StreamAbandoned { code: ErrorCode(code.into_inner()) }
    }

    /// Sends every datagram the connection has ready.
    fn send_datagrams(&mut self, now: Instant) {
        loop {
            self.send_buf.clear();
            let Some(transmit) = self.connection.poll_transmit(now, 1, &mut self.send_buf) else { break };
            send(&self.socket, &self.send_buf, &transmit);
        }
    }

    fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        if self.nonblocking != nonblocking {
            self.socket.set_nonblocking(nonblocking)?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    /// Waits for a datagram until `deadline` (forever if `None`), then takes
    /// in every datagram already queued, up to [`MAX_DATAGRAMS_PER_STEP`].
    fn receive(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        match deadline.map(|at| at.saturating_duration_since(Instant::now())) {
            Some(wait) if wait.is_zero() => self.set_nonblocking(true)?,
            wait => {
                self.set_nonblocking(false)?;
                self.socket.set_read_timeout(wait)?;
            }
        }
        for _ in 0..MAX_DATAGRAMS_PER_STEP {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((len, from)) => self.handle_datagram(from, len),
                // Timed out, nothing queued, or an ICMP error some platforms
                // report on UDP sockets: QUIC's own timers deal with loss.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
            self.set_nonblocking(true)?;
        }
        Ok(())
    }

    fn handle_datagram(&mut self, from: SocketAddr, len: usize) {
        let data = BytesMut::from(self.recv_buf.get(..len).unwrap_or_default());
        self.send_buf.clear();
        match self.endpoint.handle(Instant::now(), from, None, None, data, &mut self.send_buf) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) if handle == self.handle => {
                self.connection.handle_event(event);
            }
            // E.g. a stateless reset for a stray packet.
            Some(DatagramEvent::Response(transmit)) => send(&self.socket, &self.send_buf, &transmit),
            // No server configuration: never a new connection.
            Some(_) | None => {}
        }
    }

    /// Acts on the connection's events; reads the stream into the state machine.
    fn process_events<R: ClientRole + ?Sized>(&mut self, role: &mut R, now: Instant) -> Result<(), SessionError> {
        let mut result = Ok(());
        while let Some(event) = self.connection.poll() {
            match event {
                Event::Connected if self.stream.is_none() => {
                    self.stream = self.connection.streams().open(Dir::Bi);
                    if self.stream.is_none() && result.is_ok() {
                        self.close(ErrorCode::NO_ERROR, "no session stream allowed");
                        result = Err(SessionError::NoStream);
                    }
                }
                Event::Stream(StreamEvent::Readable { id }) if Some(id) == self.stream && result.is_ok() => {
                    result = self.read(role, id, now);
                }
                Event::Stream(StreamEvent::Writable { id }) if Some(id) == self.stream => self.blocked = false,
                Event::Stream(StreamEvent::Stopped { id, error_code }) if Some(id) == self.stream && result.is_ok() => {
                    result = Err(self.abandoned(error_code));
                }
                Event::ConnectionLost { reason } => self.lost = Some(reason),
                _ => {}
            }
        }
        while let Some(event) = self.connection.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(self.handle, event) {
                self.connection.handle_event(event);
            }
        }
        match (&result, &self.lost) {
            // The server's close code says more than what followed from it.
            (Ok(()) | Err(SessionError::StreamAbandoned { .. }), Some(reason))
                if !matches!(reason, ConnectionError::LocallyClosed) =>
            {
                Err(reason.clone().into())
            }
            (Ok(()), None) if self.recv_ended && !role.is_closed() => {
                self.close(ErrorCode::NO_ERROR, "session stream ended");
                Err(SessionError::StreamEnded)
            }
            _ => result,
        }
    }

    /// Reads everything the stream has into the state machine.
    fn read<R: ClientRole + ?Sized>(&mut self, role: &mut R, id: StreamId, now: Instant) -> Result<(), SessionError> {
        // Closed already (finished or reset and reported), or never readable.
        let mut stream = self.connection.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else { return Ok(()) };
        let outcome = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    if let Err(e) = role.handle_input(now, &chunk.bytes) {
                        break Err(Stop::Protocol(e));
                    }
                }
                Ok(None) => {
                    self.recv_ended = true;
                    break Ok(());
                }
                Err(ReadError::Blocked) => break Ok(()),
                Err(ReadError::Reset(code)) => break Err(Stop::Reset(code)),
            }
        };
        // Returns flow-control credit; the datagram goes out with this step.
        let _ = chunks.finalize();
        match outcome {
            Ok(()) => Ok(()),
            Err(Stop::Protocol(error)) => {
                self.close(error.code(), &error.to_string());
                Err(SessionError::Protocol(error))
            }
            Err(Stop::Reset(code)) => Err(self.abandoned(code)),
        }
    }
}

/// Why reading the stream stopped early.
enum Stop {
    /// The state machine refused the input.
    Protocol(Error),
    /// The server reset the stream.
    Reset(VarInt),
}

fn send(socket: &UdpSocket, buf: &[u8], transmit: &Transmit) {
    // A datagram the kernel refuses is a lost datagram: QUIC retransmits.
    let _ = socket.send_to(buf.get(..transmit.size).unwrap_or(buf), transmit.destination);
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
