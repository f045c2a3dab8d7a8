//! The game server's side of the protocol.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{ClientCore, ClientRole, Input, Phase};
use crate::error::{Error, ErrorCode};
use crate::frame::{Frame, Hello, Role, Welcome, PROTOCOL_VERSION};

/// Settings of a [`Publisher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// The game's namespace.
    pub namespace: String,
    /// Publish token, if the namespace requires one.
    pub token: Option<Bytes>,
    /// The port players connect to, when it is not the port this connection
    /// comes from. Browsers see whether the port was declared or observed.
    pub declared_port: Option<u16>,
    /// Largest frame payload accepted from the server. Default 4 KiB.
    pub max_frame_size: usize,
}

impl PublisherConfig {
    /// Defaults for publishing into `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        PublisherConfig { namespace: namespace.into(), token: None, declared_port: None, max_frame_size: 4096 }
    }
}

/// What a [`Publisher`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherEvent {
    /// The server accepted the Hello; the Welcome carries the public address
    /// browsers see and the limits in force.
    Accepted(Welcome),
    /// The server refused or ended the session.
    Rejected {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for humans.
        reason: String,
    },
}

/// A game server's session with a meta server.
///
/// Heartbeats are newest-wins: [`Publisher::set_heartbeat`] replaces any blob
/// not yet sent, and blobs go out no faster than the server's heartbeat
/// interval. Without changes, the last blob is re-sent every third of the
/// entry TTL so the entry does not expire.
///
/// ```
/// use std::time::{Duration, Instant};
/// use metaserve_proto::{frame::Frame, Publisher, PublisherConfig, PublisherEvent, Welcome};
///
/// let start = Instant::now();
/// let mut publisher = Publisher::new(PublisherConfig::new("quake3"), start);
/// publisher.set_heartbeat("players=3".into(), start).unwrap();
/// let mut out = Vec::new();
/// assert!(publisher.poll_transmit(start, &mut out)); // Hello, then the first heartbeat
/// assert!(!publisher.poll_transmit(start, &mut out));
///
/// // The server's Welcome states its limits.
/// let welcome = Welcome {
///     version: 1,
///     epoch: 99,
///     max_blob_size: 8192,
///     heartbeat_interval: Duration::from_secs(1),
///     update_interval: Duration::from_secs(1),
///     entry_ttl: Duration::from_secs(30),
///     publisher: None,
/// };
/// let mut wire = Vec::new();
/// Frame::Welcome(welcome.clone()).encode(&mut wire);
/// publisher.handle_input(start, &wire).unwrap();
/// assert_eq!(publisher.poll_event(), Some(PublisherEvent::Accepted(welcome)));
///
/// // Ten updates before the next send: only the newest goes out, one interval later.
/// for players in 0..10 {
///     publisher.set_heartbeat(format!("players={players}").into(), start).unwrap();
/// }
/// let due = publisher.poll_timeout().unwrap();
/// assert_eq!(due, start + Duration::from_secs(1));
/// out.clear();
/// assert!(!publisher.poll_transmit(start, &mut out));
/// assert!(publisher.poll_transmit(due, &mut out));
/// assert!(out.ends_with(b"players=9"));
///
/// // Without changes the blob is re-sent every third of the TTL.
/// assert_eq!(publisher.poll_timeout(), Some(due + Duration::from_secs(10)));
/// /// ```
#[derive(Debug)]
pub struct Publisher {
    core: ClientCore,
    config: PublisherConfig,
    /// Newest blob not yet sent.
    pending: Option<Bytes>,
    /// Last blob sent, re-sent to keep the entry alive.
    current: Option<Bytes>,
    last_sent: Option<Instant>,
    events: VecDeque<PublisherEvent>,
}

/// Heartbeat interval assumed until the server's Welcome states its own.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

impl Publisher {
    /// A publisher about to say Hello. `now` is accepted for symmetry with
    /// the other roles; nothing is due before the first `poll_transmit`.
    pub fn new(config: PublisherConfig, _now: Instant) -> Self {
        Publisher {
            core: ClientCore::new(config.max_frame_size),
            config,
            pending: None,
            current: None,
            last_sent: None,
            events: VecDeque::new(),
        }
    }

    /// The server's Welcome, once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.core.welcome()
    }

    /// The server's Reject, once received: its code and reason.
    pub fn rejection(&self) -> Option<(ErrorCode, &str)> {
        self.core.rejection()
    }

    /// Whether the session is over (rejected, failed, or Goodbye written).
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Sets the blob to publish; it replaces any blob not yet sent.
    ///
    /// Fails with [`Error::BlobTooLarge`] once the server's Welcome has stated
    /// a smaller maximum; before that the server enforces its limit itself.
    pub fn set_heartbeat(&mut self, blob: Bytes, _now: Instant) -> Result<(), Error> {
        if let Some(max) = self.core.welcome().map(|w| w.max_blob_size) {
            if blob.len() as u64 > max {
                return Err(Error::BlobTooLarge { len: blob.len(), max: max as usize });
            }
        }
        self.pending = Some(blob);
        Ok(())
    }

    /// Ends the session gracefully: the next `poll_transmit` writes Goodbye,
    /// after which the driver finishes the stream. The server then removes
    /// the entry at once instead of waiting for the TTL.
    pub fn shutdown(&mut self, _now: Instant) {
        self.pending = None;
        self.core.shutdown();
    }

    fn interval(&self) -> Duration {
        self.core.welcome().map_or(DEFAULT_INTERVAL, |w| w.heartbeat_interval)
    }

    fn refresh_interval(&self) -> Option<Duration> {
        let ttl = self.core.welcome()?.entry_ttl;
        Some((ttl / 3).max(self.interval()))
    }

    /// When the next heartbeat (or refresh) is due, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let last = self.last_sent?;
        match self.core.phase() {
            Phase::Accepted if self.pending.is_some() => last.checked_add(self.interval()),
            Phase::Accepted => last.checked_add(self.refresh_interval()?),
            _ => None,
        }
    }

    /// Timers are evaluated by [`Publisher::poll_transmit`]; this exists for
    /// the common shape of the roles and does nothing.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// Appends due frames to `buf`; returns whether it wrote anything.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        let start = buf.len();
        let config = &self.config;
        let hello = || Hello {
            version: PROTOCOL_VERSION,
            role: Role::Publisher,
            namespace: &config.namespace,
            token: config.token.as_deref().unwrap_or_default(),
            declared_port: config.declared_port,
            resume: None,
        };
        match self.core.transmit(buf, hello) {
            // The first heartbeat rides with the Hello, saving a round trip.
            Phase::Start => self.send_pending(now, buf),
            Phase::Accepted => {
                let due = |after: Duration| self.last_sent.and_then(|t| t.checked_add(after)).is_none_or(|t| now >= t);
                if self.pending.is_some() && due(self.interval()) {
                    self.send_pending(now, buf);
                } else if self.pending.is_none() && self.refresh_interval().is_some_and(due) {
                    if let Some(blob) = &self.current {
                        Frame::Heartbeat { blob }.encode(buf);
                        self.last_sent = Some(now);
                    }
                }
            }
            Phase::Hello | Phase::Leaving | Phase::Closed => {}
        }
        buf.len() > start
    }

    fn send_pending(&mut self, now: Instant, buf: &mut Vec<u8>) {
        if let Some(blob) = self.pending.take() {
            Frame::Heartbeat { blob: &blob }.encode(buf);
            self.current = Some(blob);
            self.last_sent = Some(now);
        }
    }

    /// Feeds bytes read from the server, cut anywhere. An error means the
    /// driver closes the connection with [`Error::code`].
    pub fn handle_input(&mut self, _now: Instant, bytes: &[u8]) -> Result<(), Error> {
        let events = &mut self.events;
        self.core.handle_input(bytes, |input| {
            match input {
                Input::Welcome(w) => events.push_back(PublisherEvent::Accepted(w.clone())),
                Input::Rejected(code, reason) => {
                    events.push_back(PublisherEvent::Rejected { code, reason: reason.to_owned() })
                }
                Input::Frame(_, frame) => {
                    return Err(Error::UnexpectedFrame { frame: frame.frame_type(), context: "at a publisher" })
                }
            }
            Ok(())
        })
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PublisherEvent> {
        self.events.pop_front()
    }
}

impl ClientRole for Publisher {
    type Event = PublisherEvent;

    fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        Publisher::handle_input(self, now, bytes)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Publisher::handle_timeout(self, now);
    }
    fn shutdown(&mut self, now: Instant) {
        Publisher::shutdown(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        Publisher::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Publisher::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<PublisherEvent> {
        Publisher::poll_event(self)
    }
    fn welcome(&self) -> Option<&Welcome> {
        Publisher::welcome(self)
    }
    fn rejection(&self) -> Option<(ErrorCode, &str)> {
        Publisher::rejection(self)
    }
    fn is_closed(&self) -> bool {
        Publisher::is_closed(self)
    }
}
