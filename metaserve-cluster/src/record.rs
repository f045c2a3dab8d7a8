//! The entry record: the value of an entry's key in the KV bucket.
//!
//! ```text
//! version     varint   1
//! flags       varint   bit 0: port declared; other bits: 0, ignored when read
//! owner       string   varint length, then the owning node's id (UTF-8, 1 to 64 bytes)
//! first_seen  varint   milliseconds since the Unix epoch, when the entry was first listed
//! blob        bytes    varint length, then the heartbeat blob
//! (later fields; a reader of this version ignores them)
//! ```
//!
//! Varints are QUIC's ([`metaserve_proto::varint`]). A record of another
//! version is refused whole, as a `Hello` of another version is: a later
//! version may lay out its fields differently.

use bytes::{BufMut, Bytes};
use metaserve_proto::varint;

/// The record version this crate reads and writes.
pub const RECORD_VERSION: u64 = 1;
/// The longest node id, in bytes.
pub const MAX_NODE_ID_LEN: usize = 64;

/// What the cluster stores of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// Whether the key's port was declared by the publisher (not observed).
    pub port_declared: bool,
    /// The node whose session publishes the entry.
    pub owner: String,
    /// When the entry was first listed, in milliseconds since the Unix epoch.
    pub first_seen_ms: u64,
    /// The publisher's newest heartbeat.
    pub blob: Bytes,
}

/// Why bytes are not an entry record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends inside a field.
    #[error("entry record ends inside its {0}")]
    Truncated(&'static str),
    /// Another record version.
    #[error("entry record of version {0}; this implementation reads version 1")]
    Version(u64),
    /// The owner is empty, too long or not UTF-8.
    #[error("entry record with an invalid owner node id")]
    Owner,
}

const PORT_DECLARED: u64 = 1;

impl EntryRecord {
    /// Appends the record's encoding to `buf`.
    ///
    /// ```
    /// use metaserve_cluster::record::EntryRecord;
    ///
    /// let record = EntryRecord { port_declared: true, owner: "a".into(), first_seen_ms: 1, blob: "hi".into() };
    /// let mut buf = Vec::new();
    /// record.encode(&mut buf);
    /// assert_eq!(buf, [0x01, 0x01, 0x01, b'a', 0x01, 0x02, b'h', b'i']);
    /// assert_eq!(EntryRecord::decode(&buf), Ok(record));
    /// ```
    pub fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        varint::put(buf, RECORD_VERSION);
        varint::put(buf, if self.port_declared { PORT_DECLARED } else { 0 });
        varint::put(buf, self.owner.len() as u64);
        buf.put_slice(self.owner.as_bytes());
        varint::put(buf, self.first_seen_ms);
        varint::put(buf, self.blob.len() as u64);
        buf.put_slice(&self.blob);
    }

    /// Reads a record; bytes after the fields of this version are ignored.
    pub fn decode(mut input: &[u8]) -> Result<EntryRecord, RecordError> {
        let version = take_varint(&mut input, "version")?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let flags = take_varint(&mut input, "flags")?;
        let owner = take_bytes(&mut input, "owner")?;
        if owner.is_empty() || owner.len() > MAX_NODE_ID_LEN {
            return Err(RecordError::Owner);
        }
        let owner = std::str::from_utf8(owner).map_err(|_| RecordError::Owner)?.to_owned();
        let first_seen_ms = take_varint(&mut input, "first_seen")?;
        let blob = Bytes::copy_from_slice(take_bytes(&mut input, "blob")?);
        Ok(EntryRecord { port_declared: flags & PORT_DECLARED != 0, owner, first_seen_ms, blob })
    }
}

fn take_varint(input: &mut &[u8], field: &'static str) -> Result<u64, RecordError> {
    match varint::read(input) {
        varint::Read::Done(value, n) => {
            *input = input.get(n..).unwrap_or_default();
            Ok(value)
        }
        varint::Read::Incomplete => Err(RecordError::Truncated(field)),
    }
}

fn take_bytes<'a>(input: &mut &'a [u8], field: &'static str) -> Result<&'a [u8], RecordError> {
    let len = take_varint(input, field)?;
    let len = usize::try_from(len).map_err(|_| RecordError::Truncated(field))?;
    let bytes = input.get(..len).ok_or(RecordError::Truncated(field))?;
    *input = input.get(len..).unwrap_or_default();
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn records_round_trip_with_any_trailing_fields(
            port_declared: bool,
            owner in "[a-z0-9-]{1,64}",
            first_seen_ms in 0..varint::MAX,
            blob in proptest::collection::vec(any::<u8>(), 0..300),
            trailing in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let record = EntryRecord { port_declared, owner, first_seen_ms, blob: blob.into() };
            let mut buf = Vec::new();
            record.encode(&mut buf);
            buf.extend(&trailing);
            prop_assert_eq!(EntryRecord::decode(&buf), Ok(record));
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EntryRecord::decode(&bytes);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let record =
            EntryRecord { port_declared: false, owner: "node-1".into(), first_seen_ms: 1 << 40, blob: "x".into() };
        let mut buf = Vec::new();
        record.encode(&mut buf);
        for n in 0..buf.len() {
            assert!(matches!(EntryRecord::decode(&buf[..n]), Err(RecordError::Truncated(_))), "{n} bytes");
        }
        buf[0] = 2;
        assert_eq!(EntryRecord::decode(&buf), Err(RecordError::Version(2)));
    }
}
