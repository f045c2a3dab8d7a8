//! Round trips through the codec: `encode(decode(x))` is stable.
//!
//! Two kinds of input:
//! - raw bytes, decoded as a stream: every frame `f` that decodes re-encodes
//!   to bytes `e` of exactly `f.encoded_len()` that decode to one frame equal
//!   to `f` and nothing else, and `e` re-encodes to `e` again;
//! - structure-aware frames (any field values): the stream of their
//!   encodings decodes to frames whose encodings are byte for byte the
//!   original ones, except where the protocol says otherwise (another
//!   version of Hello or Welcome is refused with `UnsupportedVersion`; a
//!   payload of a known type written as an "unknown" frame may be malformed
//!   or have trailing bytes, which are dropped).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use metaserve_fuzz::{chunks, ArbFrame};
use metaserve_proto::frame::Frame;
use metaserve_proto::{DecodeError, FrameDecoder};

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Raw(&'a [u8]),
    Frames { frames: Vec<ArbFrame>, cuts: &'a [u8] },
}

const MAX: usize = 1 << 20;

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    frame.encode(&mut buf);
    assert_eq!(buf.len(), frame.encoded_len(), "encoded_len disagrees with encode for {frame:?}");
    buf
}

/// Decodes one encoded frame, which must be all of `bytes`.
fn decode_one(bytes: &[u8], original: &Frame<'_>) -> Vec<u8> {
    let mut decoder = FrameDecoder::new(MAX);
    let mut out = Vec::new();
    decoder
        .decode(bytes, |frame| {
            assert!(out.is_empty(), "one encoded frame decoded to several");
            assert_eq!(&frame, original, "decode(encode(f)) != f");
            out = encode(&frame);
            Ok::<_, DecodeError>(())
        })
        .unwrap_or_else(|e| panic!("re-encoded {original:?} does not decode: {e}"));
    assert_eq!(decoder.buffered(), 0, "re-encoded frame left bytes over");
    assert!(!out.is_empty(), "re-encoded frame decoded to nothing");
    out
}

/// Checks stability of every frame of `stream`; returns the frames' encodings.
fn round_trip(parts: &[&[u8]]) -> (Vec<Vec<u8>>, Option<DecodeError>) {
    let mut decoder = FrameDecoder::new(MAX);
    let mut encodings = Vec::new();
    for part in parts {
        let result = decoder.decode(part, |frame| {
            let e1 = encode(&frame);
            let e2 = decode_one(&e1, &frame);
            assert_eq!(e1, e2, "encode(decode(encode(f))) != encode(f)");
            encodings.push(e1);
            Ok::<_, DecodeError>(())
        });
        if let Err(e) = result {
            return (encodings, Some(e));
        }
    }
    (encodings, None)
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Raw(bytes) => {
        round_trip(&[bytes]);
    }
    Input::Frames { frames, cuts } => {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for frame in &frames {
            let start = stream.len();
            frame.encode(&mut stream);
            expected.push(stream[start..].to_vec());
        }
        let (encodings, error) = round_trip(&chunks(&stream, cuts));
        // Frames decode in order; each canonical one re-encodes to its own bytes.
        for (i, (got, arb)) in encodings.iter().zip(&frames).enumerate() {
            let canonical = match arb {
                ArbFrame::Hello { version, .. } => ArbFrame::version(*version) == 1,
                ArbFrame::Welcome(w) => ArbFrame::version(w.version) == 1,
                ArbFrame::Unknown { frame_type, .. } => !(1..=9).contains(frame_type),
                _ => true,
            };
            if canonical {
                assert_eq!(got, &expected[i], "frame {i} ({arb:?}) did not round-trip byte for byte");
            }
        }
        match error {
            None => assert_eq!(encodings.len(), frames.len(), "frames lost without an error"),
            Some(e) => {
                // Only a non-canonical frame may fail to decode.
                let arb = &frames[encodings.len()];
                let allowed = match (arb, &e) {
                    (ArbFrame::Hello { version, .. }, DecodeError::UnsupportedVersion { .. }) => {
                        ArbFrame::version(*version) != 1
                    }
                    (ArbFrame::Welcome(w), DecodeError::UnsupportedVersion { .. }) => ArbFrame::version(w.version) != 1,
                    (ArbFrame::Unknown { frame_type, .. }, _) => (1..=9).contains(frame_type),
                    _ => false,
                };
                assert!(allowed, "{arb:?} encoded by this crate does not decode: {e}");
            }
        }
    }
});
