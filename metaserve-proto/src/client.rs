//! What the two client roles share: the trait of their common shape, and
//! the session core both are built on.

use std::time::Instant;

use crate::decoder::FrameDecoder;
use crate::error::{Error, ErrorCode};
use crate::frame::{Frame, Hello, Welcome};

/// The common shape of the client roles, [`Publisher`](crate::Publisher) and
/// [`Browser`](crate::Browser), for drivers that run either: each method is
/// the role's inherent method of the same name (see the crate docs for the
/// loop and its one rule).
///
/// ```
/// use std::time::Instant;
/// use metaserve_proto::{Browser, BrowserConfig, ClientRole, Publisher, PublisherConfig};
///
/// /// One pass of a driver: output, then events (here: counted).
/// fn pump<R: ClientRole>(role: &mut R, now: Instant, wire: &mut Vec<u8>) -> usize {
///     while role.poll_transmit(now, wire) {}
///     std::iter::from_fn(|| role.poll_event()).count()
/// }
///
/// let now = Instant::now();
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// assert_eq!(pump(&mut Publisher::new(PublisherConfig::new("q"), now), now, &mut a), 0);
/// assert_eq!(pump(&mut Browser::new(BrowserConfig::new("q")), now, &mut b), 0);
/// assert_eq!((a[0], b[0]), (0x01, 0x01)); // both said Hello
/// ```
pub trait ClientRole {
    /// What the role reports.
    type Event;

    /// Feeds bytes read from the session stream, cut anywhere. An error
    /// means: close the connection with [`Error::code`].
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error>;
    /// Lets timers fire.
    fn handle_timeout(&mut self, now: Instant);
    /// Asks for a Goodbye: the next `poll_transmit` writes it.
    fn shutdown(&mut self, now: Instant);
    /// Appends due output to `buf`; returns whether it wrote anything.
    #[must_use]
    fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool;
    /// When output (or a timer) is due next without new input.
    #[must_use]
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event, if any.
    #[must_use]
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// The server's Welcome, once received.
    fn welcome(&self) -> Option<&Welcome>;
    /// The server's Reject, once received: its code and reason.
    fn rejection(&self) -> Option<(ErrorCode, &str)>;
    /// Whether the role has nothing more to say (Goodbye written,
    /// rejected, or failed).
    fn is_closed(&self) -> bool;
}

/// Where a client session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Hello not yet written.
    Start,
    /// Hello written, no Welcome yet.
    Hello,
    /// Welcome received.
    Accepted,
    /// Shut down by the caller; Goodbye still to be written.
    Leaving,
    /// Nothing more to say or to read.
    Closed,
}

/// What the core hands its role from the server's input.
pub(crate) enum Input<'a> {
    /// The Welcome, received in the Hello phase: the phase is now Accepted.
    Welcome(&'a Welcome),
    /// A Reject, in any phase: the phase is now Closed.
    Rejected(ErrorCode, &'a str),
    /// Any other known frame, with the phase it arrived in; the role
    /// decides whether it is allowed there.
    Frame(Phase, Frame<'a>),
}

/// The session core of both client roles: the phases, the Hello and the
/// Goodbye, the Welcome and the Reject, and the rule that a failed or
/// ended session ignores all further input.
#[derive(Debug)]
pub(crate) struct ClientCore {
    decoder: FrameDecoder,
    phase: Phase,
    welcome: Option<Welcome>,
    rejection: Option<(ErrorCode, String)>,
}

impl ClientCore {
    pub(crate) fn new(max_frame_size: usize) -> Self {
        ClientCore { decoder: FrameDecoder::new(max_frame_size), phase: Phase::Start, welcome: None, rejection: None }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    pub(crate) fn rejection(&self) -> Option<(ErrorCode, &str)> {
        self.rejection.as_ref().map(|(code, reason)| (*code, reason.as_str()))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// A session that never said Hello has nothing to say goodbye to.
    pub(crate) fn shutdown(&mut self) {
        self.phase = match self.phase {
            Phase::Start | Phase::Closed => Phase::Closed,
            Phase::Hello | Phase::Accepted | Phase::Leaving => Phase::Leaving,
        };
    }

    /// Writes the session's own frames: the Hello (made by `hello`) in the
    /// Start phase, the Goodbye when leaving. Returns the phase it found,
    /// for the role's frames to follow.
    pub(crate) fn transmit<'h>(&mut self, buf: &mut Vec<u8>, hello: impl FnOnce() -> Hello<'h>) -> Phase {
        let phase = self.phase;
        match phase {
            Phase::Start => {
                Frame::Hello(hello()).encode(buf);
                self.phase = Phase::Hello;
            }
            Phase::Leaving => {
                Frame::Goodbye.encode(buf);
                self.phase = Phase::Closed;
            }
            Phase::Hello | Phase::Accepted | Phase::Closed => {}
        }
        phase
    }

    /// Decodes the server's bytes and hands each frame to `role`, in order.
    /// Unknown frames are skipped; after a Reject or an error (from the
    /// decoder or from `role`) the session is closed and ignores the rest.
    pub(crate) fn handle_input(
        &mut self,
        bytes: &[u8],
        mut role: impl FnMut(Input<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.phase == Phase::Closed {
            return Ok(());
        }
        let ClientCore { decoder, phase, welcome, rejection } = self;
        let result = decoder.decode(bytes, |frame| match (*phase, frame) {
            (Phase::Closed, _) | (_, Frame::Unknown { .. }) => Ok(()),
            (_, Frame::Reject(r)) => {
                *phase = Phase::Closed;
                *rejection = Some((r.code, r.reason.to_owned()));
                role(Input::Rejected(r.code, r.reason))
            }
            (Phase::Hello, Frame::Welcome(w)) => {
                *phase = Phase::Accepted;
                role(Input::Welcome(welcome.insert(w)))
            }
            // The answer to a Hello sent before the caller shut the role down
            // (it may come with the final frames of the server's close):
            // nothing to act on, the Goodbye is on its way.
            (Phase::Leaving, Frame::Welcome(_)) => Ok(()),
            (now, frame) => role(Input::Frame(now, frame)),
        });
        if result.is_err() {
            self.phase = Phase::Closed;
        }
        result
    }
}
