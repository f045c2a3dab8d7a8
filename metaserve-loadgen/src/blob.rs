//! Heartbeat blobs that carry their own send time.
//!
//! All publishers and browsers run in this process, so one `Instant` taken
//! at start-up is a clock they share: a blob holds the nanoseconds since
//! that instant at which it was handed to `publish`, and the browser that
//! receives it subtracts that from its own reading of the same clock.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the padding: send time (u64), publisher index (u32) and
/// sequence number (u32), little-endian.
pub(crate) const HEADER_LEN: usize = 16;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-local epoch (fixed by the first call).
pub(crate) fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// What a blob says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// When it was handed to `publish`, in [`now_ns`] time.
    pub(crate) sent_ns: u64,
    /// Index of the publisher (0..P).
    pub(crate) publisher: u32,
    /// The publisher's heartbeat count, from 0.
    pub(crate) seq: u32,
}

/// A blob of `size` bytes (at least [`HEADER_LEN`]) carrying `stamp`.
pub(crate) fn encode(stamp: Stamp, size: usize) -> Bytes {
    let size = size.max(HEADER_LEN);
    let mut buf = BytesMut::with_capacity(size);
    buf.put_u64_le(stamp.sent_ns);
    buf.put_u32_le(stamp.publisher);
    buf.put_u32_le(stamp.seq);
    buf.resize(size, b'.');
    buf.freeze()
}

/// The stamp of a blob made by [`encode`]; `None` if it is too short.
pub(crate) fn decode(blob: &[u8]) -> Option<Stamp> {
    let sent_ns = u64::from_le_bytes(blob.get(0..8)?.try_into().ok()?);
    let publisher = u32::from_le_bytes(blob.get(8..12)?.try_into().ok()?);
    let seq = u32::from_le_bytes(blob.get(12..16)?.try_into().ok()?);
    Some(Stamp { sent_ns, publisher, seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let stamp = Stamp { sent_ns: 123_456_789_012, publisher: 4_999, seq: 77 };
        let blob = encode(stamp, 256);
        assert_eq!(blob.len(), 256);
        assert_eq!(decode(&blob), Some(stamp));
        assert_eq!(encode(stamp, 3).len(), HEADER_LEN);
        assert_eq!(decode(&blob[..15]), None);
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now_ns() >= a + 2_000_000);
    }
}
