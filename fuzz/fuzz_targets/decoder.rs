//! The frame decoder on arbitrary bytes, cut at arbitrary points.
//!
//! Checks, beyond the absence of panics:
//! - decoding the stream in one piece, in the fuzzer's chunks, and one byte
//!   at a time yields the same frames, the same error and the same number of
//!   bytes left buffered as a simple whole-buffer reference parser;
//! - the decoder never buffers more than one frame (`max + 16` bytes) and
//!   its allocation stays within twice that;
//! - after an error nothing more is delivered.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use metaserve_fuzz::{chunks, decode_debug};
use metaserve_proto::frame::{Frame, MAX_HEADER_LEN};
use metaserve_proto::{varint, DecodeError, FrameDecoder};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    max: u16,
    cuts: &'a [u8],
    data: &'a [u8],
}

/// The whole-buffer reference: frames, the error if any, bytes left over.
fn reference(data: &[u8], max: usize) -> (Vec<String>, Option<DecodeError>, usize) {
    let mut frames = Vec::new();
    let mut rest = data;
    while let varint::Read::Done(frame_type, a) = varint::read(rest) {
        let varint::Read::Done(len, b) = varint::read(&rest[a..]) else { break };
        if len > max as u64 {
            return (frames, Some(DecodeError::FrameTooLarge { frame_type, len, max }), 0);
        }
        let len = len as usize;
        let Some(payload) = rest.get(a + b..a + b + len) else { break };
        match Frame::decode(frame_type, payload) {
            Ok(frame) => frames.push(format!("{frame:?}")),
            Err(e) => return (frames, Some(e), 0),
        }
        rest = &rest[a + b + len..];
    }
    (frames, None, rest.len())
}

fuzz_target!(|input: Input<'_>| {
    // Small maxima make FRAME_TOO_LARGE reachable; 0 allows only empty payloads.
    let max = match input.max % 4 {
        0 => usize::from(input.max >> 2) % 64,
        1 => usize::from(input.max >> 2),
        2 => metaserve_proto::DEFAULT_MAX_FRAME_SIZE,
        _ => usize::MAX >> 1,
    };
    let data = input.data;
    let (frames, error, left) = reference(data, max);

    let whole = decode_debug(&[data], max);
    let split = decode_debug(&chunks(data, input.cuts), max);
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    let single = decode_debug(&bytes, max);
    for (name, got) in [("whole", &whole), ("split", &split), ("bytewise", &single)] {
        assert_eq!(got.0, frames, "{name}: frames differ from the reference");
        assert_eq!(got.1, error, "{name}: error differs from the reference");
        if error.is_none() {
            assert_eq!(got.2, left, "{name}: buffered bytes differ from the reference");
        }
    }

    // Allocation bound: one frame, with Vec's doubling at most.
    if max <= 1 << 20 {
        let mut decoder = FrameDecoder::new(max);
        for part in chunks(data, input.cuts) {
            if decoder.decode(part, |_| Ok::<_, DecodeError>(())).is_err() {
                break;
            }
            let bound = 2 * (max + MAX_HEADER_LEN) + 64;
            assert!(decoder.allocated() <= bound, "decoder allocated {} > {bound}", decoder.allocated());
        }
    }
});
