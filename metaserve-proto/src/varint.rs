//! QUIC variable-length integers (RFC 9000, section 16).
//!
//! The two most significant bits of the first byte give the encoded length
//! (1, 2, 4 or 8 bytes); the remaining bits hold the value in network byte
//! order. Values up to 2^62 - 1 can be encoded.

use bytes::BufMut;

/// The largest value a QUIC varint can hold: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// Number of bytes `value` takes when encoded. Values above [`MAX`] are the
/// caller's bug; they are reported as 8 and clamped by [`put`].
#[inline]
pub const fn len(value: u64) -> usize {
    if value < 1 << 6 {
        1
    } else if value < 1 << 14 {
        2
    } else if value < 1 << 30 {
        4
    } else {
        8
    }
}

/// Appends `value` to `buf`. Values above [`MAX`] are clamped to [`MAX`]: every
/// caller in this crate bounds its values first, so this only keeps the output
/// well-formed.
#[inline]
pub fn put<B: BufMut + ?Sized>(buf: &mut B, value: u64) {
    let value = value.min(MAX);
    match len(value) {
        1 => buf.put_u8(value as u8),
        2 => buf.put_u16(0x4000 | value as u16),
        4 => buf.put_u32(0x8000_0000 | value as u32),
        _ => buf.put_u64(0xc000_0000_0000_0000 | value),
    }
}

/// Outcome of reading a varint from the front of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The value and the number of bytes it took.
    Done(u64, usize),
    /// The slice ends before the varint does.
    Incomplete,
}

/// Reads a varint from the front of `input`.
#[inline]
pub fn read(input: &[u8]) -> Read {
    let Some(&first) = input.first() else {
        return Read::Incomplete;
    };
    let n = 1usize << (first >> 6);
    let Some(bytes) = input.get(..n) else {
        return Read::Incomplete;
    };
    let mut value = u64::from(first & 0x3f);
    for &b in bytes.iter().skip(1) {
        value = (value << 8) | u64::from(b);
    }
    Read::Done(value, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000, appendix A.1.
        let cases: [(&[u8], u64); 4] = [
            (&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c], 151_288_809_941_952_652),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
        ];
        for (bytes, value) in cases {
            assert_eq!(read(bytes), Read::Done(value, bytes.len()));
            let mut out = Vec::new();
            put(&mut out, value);
            assert_eq!(out, bytes);
            assert_eq!(len(value), bytes.len());
        }
        // The same value may be encoded with more bytes than needed.
        assert_eq!(read(&[0x40, 0x25]), Read::Done(37, 2));
    }

    #[test]
    fn boundaries_round_trip() {
        for value in [0, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, MAX] {
            let mut out = Vec::new();
            put(&mut out, value);
            assert_eq!(out.len(), len(value));
            assert_eq!(read(&out), Read::Done(value, out.len()));
            for cut in 0..out.len() {
                assert_eq!(read(&out[..cut]), Read::Incomplete);
            }
        }
    }

    #[test]
    fn too_large_is_clamped() {
        let mut out = Vec::new();
        put(&mut out, u64::MAX);
        assert_eq!(read(&out), Read::Done(MAX, 8));
    }
}
