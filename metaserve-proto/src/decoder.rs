//! Incremental frame decoding from arbitrary splits of a byte stream.

use crate::error::DecodeError;
use crate::frame::{Frame, MAX_HEADER_LEN};
use crate::varint;

/// Default maximum frame payload: an 8 KiB blob plus room for the other fields.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 + 256;

/// Turns a byte stream, cut anywhere, into [`Frame`]s.
///
/// Complete frames are decoded straight from the input without copying;
/// only a frame cut by the end of an input is buffered, so the decoder never
/// holds more than one frame (at most `max_frame_size` payload bytes plus
/// its header), however the stream is split.
///
/// ```
/// use metaserve_proto::{frame::Frame, FrameDecoder, DecodeError};
///
/// let mut wire = Vec::new();
/// Frame::Heartbeat { blob: b"hello" }.encode(&mut wire);
/// Frame::Goodbye.encode(&mut wire);
///
/// let mut decoder = FrameDecoder::new(1024);
/// let mut frames = Vec::new();
/// for byte in &wire {
///     // One byte at a time: frames come out once they are complete.
///     decoder.decode(std::slice::from_ref(byte), |frame| {
///         frames.push(format!("{frame:?}"));
///         Ok::<_, DecodeError>(())
///     })?;
/// }
/// assert_eq!(frames, ["Heartbeat { blob: [104, 101, 108, 108, 111] }", "Goodbye"]);
/// # Ok::<_, DecodeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    partial: Vec<u8>,
    max_frame_size: usize,
}

/// A parsed frame header: (header length, frame type, payload length).
type Header = (usize, u64, usize);

fn parse_header(input: &[u8], max: usize) -> Result<Option<Header>, DecodeError> {
    let varint::Read::Done(frame_type, a) = varint::read(input) else {
        return Ok(None);
    };
    let varint::Read::Done(len, b) = varint::read(input.get(a..).unwrap_or_default()) else {
        return Ok(None);
    };
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(Some((a + b, frame_type, len))),
        _ => Err(DecodeError::FrameTooLarge { frame_type, len, max }),
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames with payloads above `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameDecoder { partial: Vec::new(), max_frame_size }
    }

    /// The largest payload this decoder accepts.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Bytes held back because they end inside a frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Heap bytes the decoder holds (its partial-frame buffer).
    pub fn allocated(&self) -> usize {
        self.partial.capacity()
    }

    /// Feeds `input`, calling `on_frame` for every frame it completes, in order.
    ///
    /// Stops at the first error, from decoding or from `on_frame`; the
    /// connection is then to be closed, and later input is meaningless.
    pub fn decode<E>(&mut self, mut input: &[u8], mut on_frame: impl FnMut(Frame<'_>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<DecodeError>,
    {
        if !self.partial.is_empty() {
            // Complete the header a byte at a time: it is at most 16 bytes, and
            // taking no more than needed leaves the next frame in `input`.
            let (header_len, frame_type, len) = loop {
                if let Some(header) = parse_header(&self.partial, self.max_frame_size)? {
                    break header;
                }
                let Some((&byte, rest)) = input.split_first() else {
                    return Ok(());
                };
                debug_assert!(self.partial.len() < MAX_HEADER_LEN);
                self.partial.push(byte);
                input = rest;
            };
            let total = header_len + len;
            let take = total.saturating_sub(self.partial.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.partial.extend_from_slice(head);
            input = rest;
            if self.partial.len() < total {
                return Ok(());
            }
            let mut partial = std::mem::take(&mut self.partial);
            let result = Frame::decode(frame_type, partial.get(header_len..).unwrap_or_default())
                .map_err(E::from)
                .and_then(&mut on_frame);
            partial.clear();
            self.partial = partial;
            result?;
        }
        while !input.is_empty() {
            let Some((header_len, frame_type, len)) = parse_header(input, self.max_frame_size)? else {
                break;
            };
            let Some(payload) = input.get(header_len..header_len + len) else {
                break;
            };
            on_frame(Frame::decode(frame_type, payload)?)?;
            input = input.get(header_len + len..).unwrap_or_default();
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }
}
