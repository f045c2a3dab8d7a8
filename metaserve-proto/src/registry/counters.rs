//! Monotonic counters of what a registry did, for metrics.

use crate::error::{DecodeError, Error, ErrorCode};
use crate::frame::FrameType;

/// How many times each [`ErrorCode`] occurred. Codes this version of the
/// protocol defines are counted one by one; any other code in one bucket.
///
/// ```
/// use metaserve_proto::{CodeCounts, ErrorCode};
/// let mut counts = CodeCounts::default();
/// counts.add(ErrorCode::BANNED);
/// counts.add(ErrorCode::BANNED);
/// assert_eq!(counts.get(ErrorCode::BANNED), 2);
/// assert_eq!(counts.iter().collect::<Vec<_>>(), [(ErrorCode::BANNED, 2)]);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeCounts {
    known: [u64; 16],
    other: u64,
}

impl CodeCounts {
    /// Counts one occurrence of `code`.
    pub fn add(&mut self, code: ErrorCode) {
        match usize::try_from(code.0).ok().and_then(|i| self.known.get_mut(i)) {
            Some(n) => *n += 1,
            None => self.other += 1,
        }
    }

    /// Occurrences of `code` (for an unknown code: of all unknown codes).
    pub fn get(&self, code: ErrorCode) -> u64 {
        usize::try_from(code.0).ok().and_then(|i| self.known.get(i)).copied().unwrap_or(self.other)
    }

    /// Occurrences of codes this version does not define.
    pub fn other(&self) -> u64 {
        self.other
    }

    /// Every defined code that occurred, with its count, in code order.
    pub fn iter(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        ErrorCode::ALL.iter().map(|&code| (code, self.get(code))).filter(|&(_, n)| n > 0)
    }

    /// Occurrences of all codes.
    pub fn total(&self) -> u64 {
        self.known.iter().sum::<u64>() + self.other
    }
}

/// Monotonic counters of a [`Registry`](crate::Registry) since its
/// creation, for metrics. Gauges (sessions, entries, revision) are in
/// [`Stats`](crate::Stats), along with the heartbeats applied and unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Applied heartbeats (they changed an entry) that replaced a version of
    /// the entry no browser had been sent yet: changes coalesced by the
    /// revision log, which browsers never see. Counted within
    /// `Stats::heartbeats_applied`.
    pub heartbeats_coalesced: u64,
    /// Heartbeats that closed their session instead of being applied, by
    /// the code of the close: `BLOB_TOO_LARGE` (over the max blob size),
    /// `FRAME_TOO_LARGE` (over the max frame size), `PROTOCOL_VIOLATION`
    /// (malformed, before Hello, or from a browser).
    pub heartbeats_rejected: CodeCounts,
    /// Sessions the registry closed, by code; `NO_ERROR` counts sessions
    /// that said Goodbye.
    pub closed: CodeCounts,
    /// Connections refused by [`Registry::accept`](crate::Registry::accept), by code.
    pub refused: CodeCounts,
    /// Upsert and Remove frames written to browsers (snapshots and deltas).
    pub entries_sent: u64,
    /// Reset frames written to browsers (resume point too old, or pruned
    /// tombstones).
    pub resets: u64,
    /// Sessions accepted as publishers.
    pub publishers_accepted: u64,
    /// Sessions accepted as browsers.
    pub browsers_accepted: u64,
}

/// Whether `error`, closing a session, was caused by a Heartbeat frame.
pub(crate) fn is_heartbeat_error(error: &Error) -> bool {
    match error {
        Error::BlobTooLarge { .. } => true,
        Error::UnexpectedFrame { frame, .. } => *frame == FrameType::HEARTBEAT,
        Error::Decode(DecodeError::Malformed { frame, .. }) => *frame == FrameType::HEARTBEAT,
        Error::Decode(DecodeError::FrameTooLarge { frame_type, .. }) => *frame_type == FrameType::HEARTBEAT.0,
        _ => false,
    }
}
