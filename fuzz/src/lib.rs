//! Helpers shared by the fuzz targets in `fuzz_targets/`: arbitrary frames,
//! addresses and stream splits, and an owned copy of a decoded frame.
//!
//! See `FUZZING.md` at the repository root for what each target checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Result, Unstructured};
use metaserve_proto::frame::{Frame, Hello, PublisherInfo, Reject, Upsert};
use metaserve_proto::{varint, DecodeError, ErrorCode, FrameDecoder, Resume, Role, Welcome};

/// A socket address: usually one of a few fixed ones (so that frames about
/// the same entry meet), sometimes any address at all.
#[derive(Debug, Clone, Copy)]
pub struct ArbAddr(pub SocketAddr);

/// The small pool [`ArbAddr`] draws from most of the time.
pub const ADDRS: [&str; 6] = [
    "192.0.2.1:27960",
    "192.0.2.1:27961",
    "192.0.2.2:27960",
    "[2001:db8::1]:27960",
    "[::ffff:192.0.2.1]:27960",
    "0.0.0.0:0",
];

impl<'a> Arbitrary<'a> for ArbAddr {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let pick: u8 = u.arbitrary()?;
        let addr = match ADDRS.get(usize::from(pick % 8)) {
            Some(s) => s.parse().map_err(|_| arbitrary::Error::IncorrectFormat)?,
            None if pick & 0x80 == 0 => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?)), u.arbitrary()?)
            }
            None => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?)), u.arbitrary()?),
        };
        Ok(ArbAddr(addr))
    }
}

/// Any frame, owned, with field values a fuzzer can steer. Values above
/// [`varint::MAX`] are possible; [`ArbFrame::normalized`] clamps them the way
/// the encoder does.
#[derive(Debug, Clone, Arbitrary)]
pub enum ArbFrame {
    /// A Hello.
    Hello {
        /// 1 most of the time: see [`ArbFrame::version`].
        version: u8,
        /// Browser when true.
        browser: bool,
        /// The namespace.
        namespace: String,
        /// The token.
        token: Vec<u8>,
        /// 0 means none.
        declared_port: u16,
        /// 0 means no resume.
        epoch: u64,
        /// Ignored when `epoch` is 0.
        cursor: u64,
    },
    /// A Welcome.
    Welcome(ArbWelcome),
    /// A Reject.
    Reject {
        /// Any code, known or not.
        code: u64,
        /// The reason.
        reason: String,
    },
    /// A Heartbeat.
    Heartbeat {
        /// The blob.
        blob: Vec<u8>,
    },
    /// A Goodbye.
    Goodbye,
    /// An Upsert.
    Upsert {
        /// The revision.
        revision: u64,
        /// The address.
        address: ArbAddr,
        /// The flag.
        port_declared: bool,
        /// The blob.
        blob: Vec<u8>,
    },
    /// A Remove.
    Remove {
        /// The revision.
        revision: u64,
        /// The address.
        address: ArbAddr,
    },
    /// A Synced.
    Synced {
        /// The revision.
        revision: u64,
    },
    /// A Reset.
    Reset,
    /// A frame of any type with any payload (known types included: their
    /// payload is then decoded as that type, usually malformed).
    Unknown {
        /// The type.
        frame_type: u64,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// The fields of a Welcome.
#[derive(Debug, Clone, Arbitrary)]
pub struct ArbWelcome {
    /// 1 most of the time: see [`ArbFrame::version`].
    pub version: u8,
    /// The epoch.
    pub epoch: u64,
    /// The max blob size.
    pub max_blob_size: u64,
    /// Milliseconds; any value, including ones that overflow an `Instant`.
    pub heartbeat_interval: u64,
    /// Milliseconds.
    pub update_interval: u64,
    /// Milliseconds.
    pub entry_ttl: u64,
    /// 0 means a browser's Welcome.
    pub publisher_id: u64,
    /// The publisher's address.
    pub address: ArbAddr,
    /// The flag.
    pub port_declared: bool,
}

impl ArbWelcome {
    /// The Welcome these fields describe.
    pub fn welcome(&self) -> Welcome {
        Welcome {
            version: ArbFrame::version(self.version),
            epoch: self.epoch & varint::MAX,
            max_blob_size: self.max_blob_size & varint::MAX,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval & varint::MAX),
            update_interval: Duration::from_millis(self.update_interval & varint::MAX),
            entry_ttl: Duration::from_millis(self.entry_ttl & varint::MAX),
            publisher: (self.publisher_id & varint::MAX != 0).then_some(PublisherInfo {
                id: self.publisher_id & varint::MAX,
                address: self.address.0,
                port_declared: self.port_declared,
            }),
        }
    }
}

impl ArbFrame {
    /// Protocol version from a fuzzer byte: 1 unless the byte is above 250.
    pub fn version(byte: u8) -> u64 {
        if byte > 250 {
            u64::from(byte - 250) + 1
        } else {
            1
        }
    }

    /// Encodes the frame (values above [`varint::MAX`] are clamped by the encoder).
    pub fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            ArbFrame::Hello { version, browser, namespace, token, declared_port, epoch, cursor } => {
                Frame::Hello(Hello {
                    version: ArbFrame::version(*version),
                    role: if *browser { Role::Browser } else { Role::Publisher },
                    namespace,
                    token,
                    declared_port: (*declared_port != 0).then_some(*declared_port),
                    resume: (*epoch & varint::MAX != 0).then_some(Resume { epoch: *epoch, cursor: *cursor }),
                })
                .encode(buf)
            }
            ArbFrame::Welcome(w) => Frame::Welcome(w.welcome()).encode(buf),
            ArbFrame::Reject { code, reason } => Frame::Reject(Reject { code: ErrorCode(*code), reason }).encode(buf),
            ArbFrame::Heartbeat { blob } => Frame::Heartbeat { blob }.encode(buf),
            ArbFrame::Goodbye => Frame::Goodbye.encode(buf),
            ArbFrame::Upsert { revision, address, port_declared, blob } => {
                Frame::Upsert(Upsert { revision: *revision, address: address.0, port_declared: *port_declared, blob })
                    .encode(buf)
            }
            ArbFrame::Remove { revision, address } => {
                Frame::Remove { revision: *revision, address: address.0 }.encode(buf)
            }
            ArbFrame::Synced { revision } => Frame::Synced { revision: *revision }.encode(buf),
            ArbFrame::Reset => Frame::Reset.encode(buf),
            ArbFrame::Unknown { frame_type, payload } => {
                Frame::Unknown { frame_type: *frame_type, payload }.encode(buf)
            }
        }
    }
}

/// Cuts `data` into consecutive chunks at the points `cuts` describes (each
/// byte is the length of the next chunk, 0 meaning an empty chunk); whatever
/// is left after the cuts is the last chunk.
pub fn chunks<'d>(data: &'d [u8], cuts: &[u8]) -> Vec<&'d [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut rest = data;
    for &cut in cuts {
        let (head, tail) = rest.split_at(usize::from(cut).min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// Decodes a whole byte stream with an incremental decoder of `max` and
/// returns every frame's `Debug` text, the error that stopped decoding (if
/// any) and the bytes left buffered.
pub fn decode_debug(parts: &[&[u8]], max: usize) -> (Vec<String>, Option<DecodeError>, usize) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for part in parts {
        let result = decoder.decode(part, |frame| {
            frames.push(format!("{frame:?}"));
            Ok::<_, DecodeError>(())
        });
        assert!(
            decoder.buffered() <= max + metaserve_proto::frame::MAX_HEADER_LEN,
            "decoder holds {} bytes, more than one frame of at most {max}",
            decoder.buffered()
        );
        if let Err(e) = result {
            return (frames, Some(e), decoder.buffered());
        }
    }
    (frames, None, decoder.buffered())
}

/// Decodes a server-to-client or client-to-server stream that must be
/// well-formed (it comes from this crate's own state machines), calling
/// `on_frame` for each frame. Panics with `what` if it does not decode.
pub fn decode_valid(decoder: &mut FrameDecoder, bytes: &[u8], what: &str, mut on_frame: impl FnMut(Frame<'_>)) {
    if let Err(e) = decoder.decode(bytes, |frame| {
        on_frame(frame);
        Ok::<_, DecodeError>(())
    }) {
        panic!("{what} does not decode: {e}");
    }
}

/// Prints `what` to stderr when `METASERVE_FUZZ_TRACE` is set: a way to see
/// which paths a corpus reaches (`cargo fuzz run <target> <corpus> -- -runs=0`
/// with the variable set, then count the lines).
pub fn trace(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("METASERVE_FUZZ_TRACE").is_some()) {
        eprintln!("trace: {}", what());
    }
}
