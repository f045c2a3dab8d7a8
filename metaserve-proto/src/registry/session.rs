//! One connection's session: its state (handshaking, publishing, browsing,
//! closing) and what it sends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::RegistryConfig;
use crate::decoder::FrameDecoder;
use crate::error::ErrorCode;
use crate::frame::{Frame, PublisherInfo, Reject, Welcome, PROTOCOL_VERSION};
use crate::varint;

use super::counters::Counters;
use super::deadline;
use super::log::{Cursor, Log};

#[derive(Debug)]
pub(super) struct Session {
    pub(super) generation: u32,
    pub(super) peer: SocketAddr,
    pub(super) decoder: FrameDecoder,
    /// The largest blob `decoder` takes, fixed at accept: a Welcome never
    /// promises more, even if `set_config` raised the limit since.
    pub(super) max_blob_decodable: usize,
    pub(super) state: State,
}

#[derive(Debug)]
pub(super) enum State {
    Handshaking,
    Publisher(Publishing),
    Browser(Browsing),
    /// Closed by the registry. `tail` holds the session's final frames,
    /// still to be taken by `poll_transmit`: a Welcome that was due when the
    /// session ended, then the Reject of an error close.
    Closing {
        tail: Vec<u8>,
        code: ErrorCode,
        reason: String,
    },
}

#[derive(Debug)]
pub(super) struct Publishing {
    pub(super) ns: usize,
    pub(super) id: u64,
    pub(super) key: SocketAddr,
    pub(super) port_declared: bool,
    pub(super) last_seen: Instant,
    pub(super) welcome_pending: bool,
    /// The limits promised in this session's Welcome, kept across `set_config`.
    pub(super) max_blob_size: usize,
    pub(super) entry_ttl: Duration,
}

#[derive(Debug)]
pub(super) struct Browsing {
    pub(super) ns: usize,
    pub(super) cursor: Cursor,
    pub(super) welcome_pending: bool,
    pub(super) reset_pending: bool,
    /// A batch of changes is being sent; it ends, with Synced, when the
    /// cursor reaches the log's head.
    pub(super) flushing: bool,
    pub(super) next_flush: Instant,
}

impl Session {
    /// A connection just accepted from `peer`, waiting for its Hello, whose
    /// frames may be up to `max_frame` bytes.
    pub(super) fn new(generation: u32, peer: SocketAddr, max_frame: usize) -> Self {
        Session {
            generation,
            peer,
            decoder: FrameDecoder::new(max_frame),
            // A Heartbeat's payload is the blob and its varint length.
            max_blob_decodable: max_frame.saturating_sub(varint::len(varint::MAX)),
            state: State::Handshaking,
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. })
    }

    /// See [`Registry::poll_connection_timeout`](super::Registry::poll_connection_timeout).
    pub(super) fn timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Browser(b) => Some(b.next_flush),
            _ => None,
        }
    }

    /// See [`Registry::poll_close`](super::Registry::poll_close).
    pub(super) fn close_reason(&self) -> Option<(ErrorCode, &str)> {
        match &self.state {
            State::Closing { tail, code, reason } if tail.is_empty() => Some((*code, reason.as_str())),
            _ => None,
        }
    }

    /// See [`Registry::session_memory`](super::Registry::session_memory).
    pub(super) fn memory(&self) -> usize {
        let reason = match &self.state {
            State::Closing { tail, reason, .. } => tail.capacity() + reason.capacity(),
            _ => 0,
        };
        std::mem::size_of::<Session>() + self.decoder.allocated() + reason
    }
}

impl State {
    /// The final frames of a session ending in this state: a Welcome that
    /// was due, then `reject` (the Reject of an error close). The Welcome
    /// goes first because the session was accepted, then ended, and the
    /// client is told both, in that order.
    pub(super) fn final_frames(&mut self, config: &RegistryConfig, epoch: u64, reject: Option<Reject<'_>>) -> Vec<u8> {
        let mut tail = Vec::new();
        match self {
            State::Publisher(p) => p.poll_welcome(config, epoch, &mut tail),
            State::Browser(b) => b.poll_welcome(config, epoch, &mut tail),
            State::Handshaking | State::Closing { .. } => {}
        }
        if let Some(reject) = reject {
            Frame::Reject(reject).encode(&mut tail);
        }
        tail
    }
}

impl Publishing {
    /// Appends the Welcome if it is due: all a publisher's session sends.
    pub(super) fn poll_welcome(&mut self, config: &RegistryConfig, epoch: u64, buf: &mut Vec<u8>) {
        if std::mem::take(&mut self.welcome_pending) {
            Frame::Welcome(self.welcome(config, epoch)).encode(buf);
        }
    }

    /// This session's Welcome: the registry's, with the limits this session
    /// was promised.
    fn welcome(&self, config: &RegistryConfig, epoch: u64) -> Welcome {
        let info = PublisherInfo { id: self.id, address: self.key, port_declared: self.port_declared };
        Welcome {
            max_blob_size: self.max_blob_size as u64,
            entry_ttl: self.entry_ttl,
            ..welcome(config, epoch, Some(info))
        }
    }
}

impl Browsing {
    /// Appends the Welcome if it is due.
    pub(super) fn poll_welcome(&mut self, config: &RegistryConfig, epoch: u64, buf: &mut Vec<u8>) {
        if std::mem::take(&mut self.welcome_pending) {
            Frame::Welcome(welcome(config, epoch, None)).encode(buf);
        }
    }

    /// Appends the Welcome if it is due, then, once the update interval has
    /// passed, the changes past the cursor from `log` (this browser's
    /// namespace's), at most about `transmit_chunk` bytes per call, ending a
    /// batch with Synced.
    pub(super) fn poll_transmit(
        &mut self,
        log: &mut Log,
        config: &RegistryConfig,
        epoch: u64,
        counters: &mut Counters,
        now: Instant,
        buf: &mut Vec<u8>,
    ) {
        let start = buf.len();
        self.poll_welcome(config, epoch, buf);
        if !self.flushing && now >= self.next_flush {
            self.flushing = log.last_rev() > self.cursor.rev;
            self.next_flush = deadline(now, config.update_interval).unwrap_or(now);
        }
        if self.flushing {
            if log.floor() > self.cursor.rev.max(self.cursor.skip_tombstones_upto) {
                // Tombstones this browser needs were pruned: start over.
                log.release(&mut self.cursor);
                self.cursor = Cursor::fresh(log.last_rev());
                self.reset_pending = true;
            }
            if std::mem::take(&mut self.reset_pending) {
                Frame::Reset.encode(buf);
                counters.resets += 1;
            }
            // The batch runs to the current head, not to the head at its
            // start: an entry that changes while the batch is under way
            // moves past the cursor and is still sent in this batch, so
            // Synced(R) always means "your list equals the namespace at R".
            let limit = start.saturating_add(config.transmit_chunk);
            let frames_before = log.frames_sent();
            let done = log.walk(&mut self.cursor, log.last_rev(), buf, limit);
            counters.entries_sent += log.frames_sent() - frames_before;
            if done {
                Frame::Synced { revision: self.cursor.rev }.encode(buf);
                self.flushing = false;
            }
        }
    }
}

/// The Welcome the registry's `config` gives a new session.
fn welcome(config: &RegistryConfig, epoch: u64, publisher: Option<PublisherInfo>) -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        epoch,
        max_blob_size: config.max_blob_size as u64,
        heartbeat_interval: config.heartbeat_interval,
        update_interval: config.update_interval,
        entry_ttl: config.entry_ttl,
        publisher,
    }
}
