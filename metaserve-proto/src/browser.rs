//! The game client's side of the protocol: the live server list.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::client::{ClientCore, ClientRole, Input, Phase};
use crate::error::{Error, ErrorCode};
use crate::frame::{Frame, FrameType, Hello, Resume, Role, Welcome, PROTOCOL_VERSION};

/// One entry of the list: a game server and its newest heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Server {
    /// Where players reach the game server: its observed IP address with
    /// the declared port, or the observed port.
    pub address: SocketAddr,
    /// Whether the port was declared by the game server (else observed).
    pub port_declared: bool,
    /// The game's heartbeat, opaque to metaserve.
    pub blob: Bytes,
    /// The registry revision of this version of the entry.
    pub revision: u64,
}

/// Settings of a [`Browser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserConfig {
    /// The game's namespace.
    pub namespace: String,
    /// Where to resume from; set by [`Browser::reconnect`].
    pub resume: Option<Resume>,
    /// Most entries the list may hold; a server sending more is cut off
    /// with `LIST_TOO_LARGE`. Default 65,536.
    pub max_entries: usize,
    /// Largest frame payload accepted; it must exceed the server's maximum
    /// blob size (its Welcome states it) by 256 bytes. Default 64 KiB + 256
    /// bytes, eight times the server's default maximum blob.
    pub max_frame_size: usize,
}

impl BrowserConfig {
    /// Defaults for browsing `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        BrowserConfig {
            namespace: namespace.into(),
            resume: None,
            max_entries: 65_536,
            max_frame_size: 64 * 1024 + 256,
        }
    }
}

/// What a [`Browser`] reports, in the order the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowserEvent {
    /// An entry was added or changed.
    Upsert(Server),
    /// An entry was removed.
    Remove(SocketAddr),
    /// The list is consistent with the registry at `revision`. The first
    /// one (and the first after each Reset) marks a complete snapshot; later
    /// ones end each batch of changes.
    Synced {
        /// The revision a reconnect resumes from.
        revision: u64,
        /// Whether this completes a snapshot.
        snapshot: bool,
    },
    /// The list was cleared; a fresh snapshot follows.
    Reset,
    /// The server refused or ended the session.
    Rejected {
        /// Why, as a code.
        code: ErrorCode,
        /// Why, for humans.
        reason: String,
    },
}

/// A game client's view of one namespace.
///
/// ```
/// use std::time::{Duration, Instant};
/// use metaserve_proto::{frame::{Frame, Upsert}, Browser, BrowserConfig, BrowserEvent, Resume, Welcome};
///
/// let now = Instant::now();
/// let mut browser = Browser::new(BrowserConfig::new("quake3"));
/// let mut hello = Vec::new();
/// assert!(browser.poll_transmit(now, &mut hello));
///
/// // What a server might send: Welcome, one entry, then the end of the snapshot.
/// let mut wire = Vec::new();
/// Frame::Welcome(Welcome {
///     version: 1,
///     epoch: 99,
///     max_blob_size: 8192,
///     heartbeat_interval: Duration::from_secs(1),
///     update_interval: Duration::from_secs(1),
///     entry_ttl: Duration::from_secs(30),
///     publisher: None,
/// })
/// .encode(&mut wire);
/// let address = "192.0.2.7:27960".parse().unwrap();
/// Frame::Upsert(Upsert { revision: 7, address, port_declared: false, blob: b"map=q3dm17" }).encode(&mut wire);
/// Frame::Synced { revision: 7 }.encode(&mut wire);
/// browser.handle_input(now, &wire).unwrap();
///
/// assert!(matches!(browser.poll_event(), Some(BrowserEvent::Upsert(s)) if s.address == address));
/// assert_eq!(browser.poll_event(), Some(BrowserEvent::Synced { revision: 7, snapshot: true }));
/// assert_eq!(browser.servers().count(), 1);
/// // After a reconnect, the browser asks for only what changed since revision 7.
/// assert_eq!(browser.resume_point(), Some(Resume { epoch: 99, cursor: 7 }));
/// ```
#[derive(Debug)]
pub struct Browser {
    core: ClientCore,
    config: BrowserConfig,
    servers: HashMap<SocketAddr, Server>,
    /// Revision of the last change received; revisions rise within a pass.
    last_rev: u64,
    /// Revision of the last Synced, 0 before the first.
    synced: u64,
    in_snapshot: bool,
    events: VecDeque<BrowserEvent>,
}

impl Browser {
    /// A browser about to say Hello, with an empty list.
    pub fn new(config: BrowserConfig) -> Self {
        let cursor = config.resume.map_or(0, |r| r.cursor);
        Browser {
            core: ClientCore::new(config.max_frame_size),
            config,
            servers: HashMap::new(),
            // A resumed session's changes all lie above its cursor.
            last_rev: cursor,
            synced: cursor,
            in_snapshot: true,
            events: VecDeque::new(),
        }
    }

    /// A new session for a new connection that keeps this browser's list and
    /// asks the server for only what changed since (see [`Browser::resume_point`]).
    /// Without a resume point it starts from an empty list.
    pub fn reconnect(self) -> Browser {
        let resume = self.resume_point();
        let mut next = Browser::new(BrowserConfig { resume, ..self.config });
        if resume.is_some() {
            next.servers = self.servers;
            next.in_snapshot = false;
        }
        next
    }

    /// Where a reconnect resumes from: the registry epoch and the revision of
    /// the last Synced — in a resumed session, until its first Synced, the
    /// cursor it resumed from, so a connection lost during the catch-up
    /// resumes again. None before the first Synced of a fresh list (after a
    /// Reset, or a Welcome of another epoch), and None for an epoch of 0: a
    /// Hello cannot carry it (0 means "no resume"), so the reconnect starts
    /// from an empty list instead of keeping one the server will not bring
    /// up to date.
    #[must_use]
    pub fn resume_point(&self) -> Option<Resume> {
        let point = match self.core.welcome() {
            Some(w) => (self.synced > 0).then_some(Resume { epoch: w.epoch, cursor: self.synced }),
            None => self.config.resume,
        };
        point.filter(|r| r.epoch != 0)
    }

    /// The current list, in no particular order.
    pub fn servers(&self) -> impl ExactSizeIterator<Item = &Server> + '_ {
        self.servers.values()
    }

    /// The entry for `address`, if listed.
    pub fn server(&self, address: &SocketAddr) -> Option<&Server> {
        self.servers.get(address)
    }

    /// Whether the list has been complete since the last snapshot's Synced.
    pub fn is_synced(&self) -> bool {
        !self.in_snapshot && self.core.phase() == Phase::Accepted
    }

    /// The server's Welcome, once received.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.core.welcome()
    }

    /// The server's Reject, once received: its code and reason.
    pub fn rejection(&self) -> Option<(ErrorCode, &str)> {
        self.core.rejection()
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Ends the session: the next `poll_transmit` writes Goodbye.
    pub fn shutdown(&mut self, _now: Instant) {
        self.core.shutdown();
    }

    /// Browsers have no timers; exists for the common shape of the roles.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Browsers have no timers; exists for the common shape of the roles.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// Appends due frames to `buf` (the Hello, or a Goodbye); returns whether
    /// it wrote anything.
    #[must_use]
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut Vec<u8>) -> bool {
        let start = buf.len();
        let config = &self.config;
        let hello = || Hello {
            version: PROTOCOL_VERSION,
            role: Role::Browser,
            namespace: &config.namespace,
            token: &[],
            declared_port: None,
            resume: config.resume,
        };
        let _ = self.core.transmit(buf, hello);
        buf.len() > start
    }

    /// Feeds bytes read from the server, cut anywhere, updating the list and
    /// queueing events. An error means the driver closes the connection with
    /// [`Error::code`].
    pub fn handle_input(&mut self, _now: Instant, bytes: &[u8]) -> Result<(), Error> {
        // The core is taken out while it calls back into the rest of self.
        let mut core = std::mem::replace(&mut self.core, ClientCore::new(0));
        let result = core.handle_input(bytes, |input| self.on_input(input));
        self.core = core;
        result
    }

    fn on_input(&mut self, input: Input<'_>) -> Result<(), Error> {
        let unexpected = |frame: FrameType, context| Err(Error::UnexpectedFrame { frame, context });
        let frame = match input {
            Input::Rejected(code, reason) => {
                self.events.push_back(BrowserEvent::Rejected { code, reason: reason.to_owned() });
                return Ok(());
            }
            Input::Welcome(w) => {
                if self.config.resume.is_some_and(|r| r.epoch != w.epoch) {
                    // Another epoch: the cursor means nothing here (a Reset follows).
                    (self.last_rev, self.synced) = (0, 0);
                }
                return Ok(());
            }
            Input::Frame(phase, frame) => (phase, frame),
        };
        match frame {
            (Phase::Hello, frame) => unexpected(frame.frame_type(), "before Welcome"),
            (Phase::Accepted | Phase::Leaving, Frame::Upsert(u)) => {
                self.advance(FrameType::UPSERT, u.revision)?;
                let server = Server {
                    address: u.address,
                    port_declared: u.port_declared,
                    blob: Bytes::copy_from_slice(u.blob),
                    revision: u.revision,
                };
                if !self.servers.contains_key(&u.address) && self.servers.len() >= self.config.max_entries {
                    return Err(Error::ListTooLarge { max: self.config.max_entries });
                }
                self.servers.insert(u.address, server.clone());
                self.events.push_back(BrowserEvent::Upsert(server));
                Ok(())
            }
            (Phase::Accepted | Phase::Leaving, Frame::Remove { revision, address }) => {
                self.advance(FrameType::REMOVE, revision)?;
                // Removals of entries this browser never saw are expected.
                if self.servers.remove(&address).is_some() {
                    self.events.push_back(BrowserEvent::Remove(address));
                }
                Ok(())
            }
            (Phase::Accepted | Phase::Leaving, Frame::Synced { revision }) => {
                if revision < self.last_rev {
                    return unexpected(FrameType::SYNCED, "behind the last change");
                }
                self.last_rev = revision;
                self.synced = revision;
                let snapshot = std::mem::take(&mut self.in_snapshot);
                self.events.push_back(BrowserEvent::Synced { revision, snapshot });
                Ok(())
            }
            (Phase::Accepted | Phase::Leaving, Frame::Reset) => {
                self.servers.clear();
                (self.last_rev, self.synced) = (0, 0);
                self.in_snapshot = true;
                self.events.push_back(BrowserEvent::Reset);
                Ok(())
            }
            (_, frame) => unexpected(frame.frame_type(), "at a browser"),
        }
    }

    /// Revisions rise strictly between Resets; anything else is a broken server.
    fn advance(&mut self, frame: FrameType, revision: u64) -> Result<(), Error> {
        if revision <= self.last_rev {
            return Err(Error::UnexpectedFrame { frame, context: "with a revision that does not increase" });
        }
        self.last_rev = revision;
        Ok(())
    }

    /// The next event, if any. Events are queued by `handle_input`; drain
    /// them after each call.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<BrowserEvent> {
        self.events.pop_front()
    }
}

impl ClientRole for Browser {
    type Event = BrowserEvent;

    fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        Browser::handle_input(self, now, bytes)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Browser::handle_timeout(self, now);
    }
    fn shutdown(&mut self, now: Instant) {
        Browser::shutdown(self, now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        Browser::poll_transmit(self, now, buf)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Browser::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<BrowserEvent> {
        Browser::poll_event(self)
    }
    fn welcome(&self) -> Option<&Welcome> {
        Browser::welcome(self)
    }
    fn rejection(&self) -> Option<(ErrorCode, &str)> {
        Browser::rejection(self)
    }
    fn is_closed(&self) -> bool {
        Browser::is_closed(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::frame::Upsert;

    fn welcome(epoch: u64) -> Vec<u8> {
        let mut wire = Vec::new();
        Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            epoch,
            max_blob_size: 8192,
            heartbeat_interval: Duration::from_secs(1),
            update_interval: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(30),
            publisher: None,
        })
        .encode(&mut wire);
        wire
    }

    fn upsert(revision: u64) -> Vec<u8> {
        let mut wire = Vec::new();
        let address = SocketAddr::from(([192, 0, 2, 7], 27960));
        Frame::Upsert(Upsert { revision, address, port_declared: false, blob: b"x" }).encode(&mut wire);
        wire
    }

    fn resumed(epoch: u64, cursor: u64) -> Browser {
        let resume = Some(Resume { epoch, cursor });
        let mut browser = Browser::new(BrowserConfig { resume, ..BrowserConfig::new("q") });
        assert!(browser.poll_transmit(Instant::now(), &mut Vec::new()));
        browser
    }

    /// Between the Welcome and the first Synced of a resumed session, the
    /// resume point is still the cursor it resumed from; changes must lie
    /// above it.
    #[test]
    fn a_resumed_session_keeps_its_cursor_until_its_first_synced() {
        let now = Instant::now();
        let mut browser = resumed(99, 7);
        browser.handle_input(now, &welcome(99)).unwrap();
        assert_eq!(browser.resume_point(), Some(Resume { epoch: 99, cursor: 7 }));
        browser.handle_input(now, &upsert(8)).unwrap();
        assert_eq!(browser.resume_point(), Some(Resume { epoch: 99, cursor: 7 }));

        let mut stale = resumed(99, 7);
        stale.handle_input(now, &welcome(99)).unwrap();
        let err = stale.handle_input(now, &upsert(7)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::PROTOCOL_VIOLATION);
    }

    /// Shut down before the Welcome came (it may arrive with the final
    /// frames of the server's close): the Welcome is no error, and the
    /// Goodbye still goes out. Found by the registry fuzz target
    /// (`fuzz/corpus/registry/seed-regression-welcome-while-leaving`).
    #[test]
    fn a_welcome_after_shutdown_is_no_error() {
        let now = Instant::now();
        let mut browser = Browser::new(BrowserConfig::new("q"));
        assert!(browser.poll_transmit(now, &mut Vec::new()));
        browser.shutdown(now);
        browser.handle_input(now, &welcome(7)).unwrap();
        let mut goodbye = Vec::new();
        assert!(browser.poll_transmit(now, &mut goodbye));
        assert_eq!(goodbye, [0x05, 0x00]);
        assert!(browser.is_closed());
    }

    /// A Welcome of another epoch drops the cursor: no resume point until
    /// the fresh snapshot's Synced, and revisions count from the Reset.
    #[test]
    fn another_epoch_starts_the_count_over() {
        let now = Instant::now();
        let mut browser = resumed(99, 7);
        let mut wire = welcome(100);
        Frame::Reset.encode(&mut wire);
        wire.extend(upsert(1));
        browser.handle_input(now, &wire).unwrap();
        assert_eq!(browser.resume_point(), None);
        let mut synced = Vec::new();
        Frame::Synced { revision: 1 }.encode(&mut synced);
        browser.handle_input(now, &synced).unwrap();
        assert_eq!(browser.resume_point(), Some(Resume { epoch: 100, cursor: 1 }));
    }
}
