//! Tests of the wire codec: frame encoding and decoding, the incremental
//! [`FrameDecoder`], and the worked examples of `docs/PROTOCOL.md`, which are
//! checked byte for byte against the crate so the document cannot drift.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaserve_proto::frame::{Frame, FrameType, Hello, PublisherInfo, Reject, Upsert, MAX_HEADER_LEN};
use metaserve_proto::{
    varint, Browser, BrowserConfig, BrowserEvent, DecodeError, Error, ErrorCode, Event, FrameDecoder, Publisher,
    PublisherConfig, PublisherEvent, Registry, RegistryConfig, Resume, Role, Welcome, ALPN, DEFAULT_MAX_FRAME_SIZE,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// An owned mirror of `Frame`, so decoded frames can outlive the decoder call.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owned {
    Hello {
        version: u64,
        role: Role,
        namespace: String,
        token: Vec<u8>,
        declared_port: Option<u16>,
        resume: Option<Resume>,
    },
    Welcome(Welcome),
    Reject {
        code: ErrorCode,
        reason: String,
    },
    Heartbeat(Vec<u8>),
    Goodbye,
    Upsert {
        revision: u64,
        address: SocketAddr,
        port_declared: bool,
        blob: Vec<u8>,
    },
    Remove {
        revision: u64,
        address: SocketAddr,
    },
    Synced(u64),
    Reset,
    Unknown {
        frame_type: u64,
        payload: Vec<u8>,
    },
}

impl Owned {
    fn of(frame: &Frame<'_>) -> Owned {
        match frame {
            Frame::Hello(h) => Owned::Hello {
                version: h.version,
                role: h.role,
                namespace: h.namespace.to_owned(),
                token: h.token.to_vec(),
                declared_port: h.declared_port,
                resume: h.resume,
            },
            Frame::Welcome(w) => Owned::Welcome(w.clone()),
            Frame::Reject(r) => Owned::Reject { code: r.code, reason: r.reason.to_owned() },
            Frame::Heartbeat { blob } => Owned::Heartbeat(blob.to_vec()),
            Frame::Goodbye => Owned::Goodbye,
            Frame::Upsert(u) => Owned::Upsert {
                revision: u.revision,
                address: u.address,
                port_declared: u.port_declared,
                blob: u.blob.to_vec(),
            },
            Frame::Remove { revision, address } => Owned::Remove { revision: *revision, address: *address },
            Frame::Synced { revision } => Owned::Synced(*revision),
            Frame::Reset => Owned::Reset,
            Frame::Unknown { frame_type, payload } => {
                Owned::Unknown { frame_type: *frame_type, payload: payload.to_vec() }
            }
        }
    }

    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Hello { version, role, namespace, token, declared_port, resume } => Frame::Hello(Hello {
                version: *version,
                role: *role,
                namespace,
                token,
                declared_port: *declared_port,
                resume: *resume,
            }),
            Owned::Welcome(w) => Frame::Welcome(w.clone()),
            Owned::Reject { code, reason } => Frame::Reject(Reject { code: *code, reason }),
            Owned::Heartbeat(blob) => Frame::Heartbeat { blob },
            Owned::Goodbye => Frame::Goodbye,
            Owned::Upsert { revision, address, port_declared, blob } => {
                Frame::Upsert(Upsert { revision: *revision, address: *address, port_declared: *port_declared, blob })
            }
            Owned::Remove { revision, address } => Frame::Remove { revision: *revision, address: *address },
            Owned::Synced(revision) => Frame::Synced { revision: *revision },
            Owned::Reset => Frame::Reset,
            Owned::Unknown { frame_type, payload } => Frame::Unknown { frame_type: *frame_type, payload },
        }
    }

    fn encode(&self) -> Vec<u8> {
        let frame = self.frame();
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        assert_eq!(buf.len(), frame.encoded_len(), "encoded_len of {self:?}");
        buf
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Parses whitespace-separated two-digit hex bytes.
fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|t| u8::from_str_radix(t, 16).unwrap()).collect()
}

/// Splits one encoded frame into (type, header length, payload).
fn split_frame(wire: &[u8]) -> (u64, usize, &[u8]) {
    let varint::Read::Done(frame_type, a) = varint::read(wire) else { panic!("no type") };
    let varint::Read::Done(len, b) = varint::read(&wire[a..]) else { panic!("no length") };
    let payload = &wire[a + b..];
    assert_eq!(payload.len() as u64, len, "length field of {}", hex(wire));
    (frame_type, a + b, payload)
}

/// Builds a frame from a raw type and payload, with a minimal header.
fn raw_frame(frame_type: u64, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    varint::put(&mut wire, frame_type);
    varint::put(&mut wire, payload.len() as u64);
    wire.extend_from_slice(payload);
    wire
}

/// What a decoder made of a stream: its frames, the first error, and the
/// bytes it held back at the end.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    frames: Vec<Owned>,
    result: Result<(), DecodeError>,
    buffered: usize,
}

/// Feeds `chunks` to a decoder with `max` in order, stopping at the first
/// error, and checks after every call that it never buffers more than one
/// frame.
fn decode_chunks<'c>(max: usize, chunks: impl IntoIterator<Item = &'c [u8]>) -> Decoded {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    let mut result = Ok(());
    for chunk in chunks {
        result = decoder.decode(chunk, |frame| {
            frames.push(Owned::of(&frame));
            Ok::<_, DecodeError>(())
        });
        assert!(
            decoder.buffered() <= max + MAX_HEADER_LEN,
            "decoder buffers {} bytes with a maximum of {max}",
            decoder.buffered()
        );
        if result.is_err() {
            break;
        }
    }
    // After an error the decoder's state is meaningless: the connection closes.
    let buffered = if result.is_ok() { decoder.buffered() } else { 0 };
    Decoded { frames, result, buffered }
}

/// Cuts `wire` at the given (unsorted, possibly repeated) positions.
fn cut_at(wire: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        let cut = cut.min(wire.len());
        chunks.push(&wire[start..cut]);
        start = cut;
    }
    chunks.push(&wire[start..]);
    chunks
}

fn decode_one(wire: &[u8]) -> Owned {
    let (frame_type, _, payload) = split_frame(wire);
    let decoded = decode_chunks(payload.len(), [wire]);
    assert_eq!(decoded.result, Ok(()));
    assert_eq!(decoded.buffered, 0);
    assert_eq!(decoded.frames.len(), 1);
    let direct = Owned::of(&Frame::decode(frame_type, payload).unwrap());
    assert_eq!(decoded.frames[0], direct);
    direct
}

fn assert_round_trip(frame: &Owned) {
    let wire = frame.encode();
    assert_eq!(&decode_one(&wire), frame, "round trip of {}", hex(&wire));
}

fn v4(s: &str) -> SocketAddr {
    let addr: SocketAddr = s.parse().unwrap();
    assert!(addr.is_ipv4());
    addr
}

fn v6(s: &str) -> SocketAddr {
    let addr: SocketAddr = s.parse().unwrap();
    assert!(addr.is_ipv6());
    addr
}

fn welcome(publisher: Option<PublisherInfo>) -> Welcome {
    Welcome {
        version: 1,
        epoch: 0x5eed,
        max_blob_size: 8192,
        heartbeat_interval: Duration::from_secs(1),
        update_interval: Duration::from_secs(1),
        entry_ttl: Duration::from_secs(30),
        publisher,
    }
}

// ---------------------------------------------------------------------------
// The worked examples of docs/PROTOCOL.md
// ---------------------------------------------------------------------------

struct Example {
    /// The name in the document's `<!-- example: NAME -->` marker.
    name: &'static str,
    frame: Owned,
    hex: &'static str,
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            name: "publisher-hello",
            frame: Owned::Hello {
                version: 1,
                role: Role::Publisher,
                namespace: "quake3".into(),
                token: b"s3cret".to_vec(),
                declared_port: Some(27960),
                resume: None,
            },
            hex: "01 16 01 00 06 71 75 61 6b 65 33 06 73 33 63 72 65 74 80 00 6d 38 00 00",
        },
        Example {
            name: "browser-hello",
            frame: Owned::Hello {
                version: 1,
                role: Role::Browser,
                namespace: "quake3".into(),
                token: Vec::new(),
                declared_port: None,
                resume: Some(Resume { epoch: 0x5eed, cursor: 1234 }),
            },
            hex: "01 11 01 01 06 71 75 61 6b 65 33 00 00 80 00 5e ed 44 d2",
        },
        Example {
            name: "heartbeat",
            frame: Owned::Heartbeat(b"map=q3dm17;players=3".to_vec()),
            hex: "04 15 14 6d 61 70 3d 71 33 64 6d 31 37 3b 70 6c 61 79 65 72 73 3d 33",
        },
        Example {
            name: "welcome-publisher",
            frame: Owned::Welcome(welcome(Some(PublisherInfo {
                id: 1,
                address: v4("192.0.2.7:27960"),
                port_declared: true,
            }))),
            hex: "02 18 01 80 00 5e ed 60 00 43 e8 43 e8 80 00 75 30 01 04 c0 00 02 07 6d 38 01",
        },
        Example {
            name: "welcome-browser",
            frame: Owned::Welcome(welcome(None)),
            hex: "02 10 01 80 00 5e ed 60 00 43 e8 43 e8 80 00 75 30 00",
        },
        Example {
            name: "reject",
            frame: Owned::Reject {
                code: ErrorCode::UNAUTHORIZED,
                reason: "missing or invalid token for this namespace".into(),
            },
            hex: "03 2d 05 2b 6d 69 73 73 69 6e 67 20 6f 72 20 69 6e 76 61 6c 69 64 20 74 6f 6b 65 6e 20 \
                  66 6f 72 20 74 68 69 73 20 6e 61 6d 65 73 70 61 63 65",
        },
        Example { name: "goodbye", frame: Owned::Goodbye, hex: "05 00" },
        Example {
            name: "upsert-ipv6",
            frame: Owned::Upsert {
                revision: 300,
                address: v6("[2001:db8::7]:27960"),
                port_declared: false,
                blob: b"map=q3dm17".to_vec(),
            },
            hex: "06 21 41 2c 06 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 07 6d 38 00 0a \
                  6d 61 70 3d 71 33 64 6d 31 37",
        },
        Example {
            name: "remove-ipv4",
            frame: Owned::Remove { revision: 301, address: v4("192.0.2.7:27960") },
            hex: "07 09 41 2d 04 c0 00 02 07 6d 38",
        },
        Example { name: "synced", frame: Owned::Synced(301), hex: "08 02 41 2d" },
        Example {
            name: "upsert-ipv4",
            frame: Owned::Upsert {
                revision: 1,
                address: v4("192.0.2.7:27960"),
                port_declared: true,
                blob: b"map=q3dm17;players=3".to_vec(),
            },
            hex: "06 1e 01 04 c0 00 02 07 6d 38 01 14 6d 61 70 3d 71 33 64 6d 31 37 3b 70 6c 61 79 65 72 73 3d 33",
        },
        Example { name: "synced-snapshot", frame: Owned::Synced(1), hex: "08 01 01" },
        Example { name: "reset", frame: Owned::Reset, hex: "09 00" },
        Example {
            name: "unknown",
            frame: Owned::Unknown { frame_type: 0x40, payload: b"hi".to_vec() },
            hex: "40 40 02 68 69",
        },
        Example {
            name: "reject-version",
            frame: Owned::Reject {
                code: ErrorCode::UNSUPPORTED_VERSION,
                reason: "Hello of unsupported protocol version 2; this implementation speaks version 1".into(),
            },
            hex: "03 40 50 03 40 4d 48 65 6c 6c 6f 20 6f 66 20 75 6e 73 75 70 70 6f 72 74 65 64 20 70 72 6f \
                  74 6f 63 6f 6c 20 76 65 72 73 69 6f 6e 20 32 3b 20 74 68 69 73 20 69 6d 70 6c 65 6d 65 6e \
                  74 61 74 69 6f 6e 20 73 70 65 61 6b 73 20 76 65 72 73 69 6f 6e 20 31",
        },
    ]
}

/// Documented frames that a version-1 receiver refuses while decoding, each
/// in a `<!-- unsupported-example: NAME -->` block of docs/PROTOCOL.md.
struct UnsupportedExample {
    name: &'static str,
    hex: &'static str,
    error: DecodeError,
}

const UNSUPPORTED_EXAMPLES: [UnsupportedExample; 1] = [UnsupportedExample {
    name: "hello-version-2",
    // Version 2, then a role of 5 and a namespace: a layout version 1 does not know.
    hex: "01 09 02 05 06 71 75 61 6b 65 33",
    error: DecodeError::UnsupportedVersion { frame: FrameType::HELLO, version: 2 },
}];

fn example(name: &str) -> Vec<u8> {
    unhex(examples().iter().find(|e| e.name == name).unwrap().hex)
}

#[test]
fn examples_encode_and_decode_byte_for_byte() {
    for ex in examples() {
        let wire = unhex(ex.hex);
        assert_eq!(hex(&ex.frame.encode()), hex(&wire), "encoding of example {}", ex.name);
        assert_eq!(decode_one(&wire), ex.frame, "decoding of example {}", ex.name);
    }
}

/// The examples cover every frame type, both address families, and a Welcome
/// with and without the publisher part.
#[test]
fn examples_cover_every_frame_type() {
    let examples = examples();
    for ty in 1..=9 {
        assert!(
            examples.iter().any(|e| e.frame.frame().frame_type() == FrameType(ty)),
            "no example of frame type {ty}"
        );
    }
    assert!(examples.iter().any(|e| matches!(e.frame, Owned::Unknown { .. })));
}

/// Reads the `<!-- example: NAME -->` blocks of docs/PROTOCOL.md.
fn document_examples() -> Vec<(String, Vec<u8>)> {
    document_blocks("example")
}

/// docs/PROTOCOL.md, through the crate's `PROTOCOL.md` symlink to it: a
/// file of the package, so these tests also run in the published crate
/// (`cargo package` copies the file the symlink points to).
fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).expect("PROTOCOL.md")
}

/// Reads the `<!-- KIND: NAME -->` blocks of docs/PROTOCOL.md: the code
/// fence after each marker holds one byte group per line, two-digit hex bytes
/// first, then the annotation.
fn document_blocks(kind: &str) -> Vec<(String, Vec<u8>)> {
    let doc = protocol_md();
    let marker = format!("<!-- {kind}:");
    let mut found = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.trim().strip_prefix(marker.as_str()).and_then(|r| r.strip_suffix("-->")) else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "example {name}: a code fence must follow the marker");
        let mut bytes = Vec::new();
        for line in lines.by_ref() {
            if line.starts_with("```") {
                break;
            }
            for token in line.split_whitespace() {
                match (token.len(), u8::from_str_radix(token, 16)) {
                    (2, Ok(byte)) => bytes.push(byte),
                    _ => break, // the annotation starts here
                }
            }
        }
        found.push((name.trim().to_owned(), bytes));
    }
    found
}

#[test]
fn protocol_md_examples_match_the_code() {
    let documented = document_examples();
    let examples = examples();
    assert!(documented.len() >= 4, "PROTOCOL.md has only {} checked examples", documented.len());
    for (name, bytes) in &documented {
        let ex = examples
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("PROTOCOL.md example {name} is not checked by this test"));
        assert_eq!(hex(bytes), hex(&ex.frame.encode()), "PROTOCOL.md example {name}");
        assert_eq!(decode_one(bytes), ex.frame, "PROTOCOL.md example {name}");
    }
    for ex in &examples {
        assert!(documented.iter().any(|(name, _)| name == ex.name), "example {} missing from PROTOCOL.md", ex.name);
    }
}

#[test]
fn protocol_md_unsupported_examples_match_the_code() {
    let documented = document_blocks("unsupported-example");
    assert_eq!(documented.len(), UNSUPPORTED_EXAMPLES.len());
    for ex in &UNSUPPORTED_EXAMPLES {
        let bytes = documented
            .iter()
            .find(|(name, _)| name == ex.name)
            .map(|(_, bytes)| bytes)
            .unwrap_or_else(|| panic!("example {} missing from PROTOCOL.md", ex.name));
        assert_eq!(hex(bytes), ex.hex, "PROTOCOL.md example {}", ex.name);
        let (frame_type, _, payload) = split_frame(bytes);
        assert_eq!(Frame::decode(frame_type, payload).err().as_ref(), Some(&ex.error), "{}", ex.name);
        let decoded = decode_chunks(4096, [&bytes[..]]);
        assert_eq!((decoded.frames, decoded.result), (vec![], Err(ex.error.clone())), "{}", ex.name);
    }
}

#[test]
fn protocol_md_tables_match_the_code() {
    let doc = protocol_md();
    for code in ErrorCode::ALL {
        let row = format!("| `0x{:02x}` | `{}` |", code.0, code.name().unwrap());
        assert!(doc.contains(&row), "PROTOCOL.md lacks the error code row {row}");
    }
    assert_eq!(ErrorCode::ALL.len(), 16);
    for (value, code) in ErrorCode::ALL.iter().enumerate() {
        assert_eq!(code.0, value as u64, "error codes are dense from 0");
    }
    for ty in 1..=9 {
        let row = format!("| `0x{ty:02x}` | {} |", FrameType(ty));
        assert!(doc.contains(&row), "PROTOCOL.md lacks the frame type row {row}");
    }
    let alpn = format!("`{}`", std::str::from_utf8(ALPN).unwrap());
    assert!(doc.contains(&alpn));
    assert_eq!(ALPN, b"metaserve/1");
    assert_eq!(PROTOCOL_VERSION, 1);
}

/// The defaults PROTOCOL.md lists.
#[test]
fn documented_limits() {
    let c = RegistryConfig::default();
    assert_eq!(c.max_blob_size, 8192);
    assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
    assert_eq!(c.update_interval, Duration::from_secs(1));
    assert_eq!(c.entry_ttl, Duration::from_secs(30));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.max_publishers_per_ip, 16);
    assert_eq!(c.max_browsers_per_ip, 64);
    assert_eq!(c.max_publishers, 100_000);
    assert_eq!(c.max_browsers, 100_000);
    assert_eq!(c.max_handshakes, 10_000);
    assert_eq!(c.max_namespaces, 1024);
    assert_eq!(c.max_namespace_len, 64);
    assert_eq!(c.max_tombstones, 10_000);
    assert_eq!(c.max_token_len, 256);
    assert_eq!(c.transmit_chunk, 16 * 1024);
    assert_eq!(c.max_frame_size(), 8192 + 64);
    let big_token = RegistryConfig { max_token_len: 10_000, ..RegistryConfig::default() };
    assert_eq!(big_token.max_frame_size(), 64 + 10_000 + 64);
    // No longer the browser's default, but still exported.
    assert_eq!(DEFAULT_MAX_FRAME_SIZE, 8 * 1024 + 256);
    // 64 KiB + 256: the rule "max blob size + 256" for a server whose blobs
    // are up to eight times the default.
    let browser = BrowserConfig::new("x");
    assert_eq!(browser.max_frame_size, 65_792);
    assert_eq!(browser.max_frame_size, 64 * 1024 + 256);
    assert_eq!(browser.max_frame_size, 8 * c.max_blob_size + 256);
    assert_eq!(browser.max_entries, 65_536);
    assert_eq!(PublisherConfig::new("x").max_frame_size, 4096);
}

/// A browser with the default limit takes an Upsert with a 64 KiB blob, the
/// most a server may be configured for, and refuses a larger frame from its
/// header.
#[test]
fn browser_default_frame_limit() {
    let now = Instant::now();
    let max = BrowserConfig::new("quake3").max_frame_size;
    let big_welcome = Owned::Welcome(Welcome { max_blob_size: 64 * 1024, ..welcome(None) });
    for (blob, fits) in [(64 * 1024, true), (max - 32, true), (max - 13, true), (max - 12, false)] {
        let mut browser = Browser::new(BrowserConfig::new("quake3"));
        let mut out = Vec::new();
        assert!(browser.poll_transmit(now, &mut out));
        browser.handle_input(now, &big_welcome.encode()).unwrap();
        // With an IPv4 address and a 1-byte revision, the Upsert's payload is
        // the blob plus 13 bytes.
        let upsert =
            |address| Owned::Upsert { revision: 1, address, port_declared: false, blob: vec![7; blob] }.encode();
        let wire = upsert(v4("192.0.2.7:27960"));
        assert_eq!(split_frame(&wire).2.len(), blob + 13);
        let result = browser.handle_input(now, &wire);
        if fits {
            assert_eq!(result, Ok(()), "blob of {blob} bytes");
            assert!(matches!(browser.poll_event(), Some(BrowserEvent::Upsert(s)) if s.blob.len() == blob));
        } else {
            assert_eq!(result.map_err(|e| e.code()), Err(ErrorCode::FRAME_TOO_LARGE), "blob of {blob} bytes");
        }
    }
    // The largest overhead for a blob below 2^30 bytes: an 8-byte revision,
    // an IPv6 address (19 bytes), flags and a 4-byte blob length.
    let worst = Owned::Upsert {
        revision: varint::MAX,
        address: v6("[2001:db8::7]:27960"),
        port_declared: true,
        blob: vec![7; max - 32],
    };
    assert_eq!(split_frame(&worst.encode()).2.len(), max);
}

// The examples are what the role state machines really send.

#[test]
fn publisher_sends_the_documented_hello_and_heartbeat() {
    let now = Instant::now();
    let mut config = PublisherConfig::new("quake3");
    config.token = Some(Bytes::from_static(b"s3cret"));
    config.declared_port = Some(27960);
    let mut publisher = Publisher::new(config, now);
    publisher.set_heartbeat(Bytes::from_static(b"map=q3dm17;players=3"), now).unwrap();
    let mut out = Vec::new();
    assert!(publisher.poll_transmit(now, &mut out));
    let mut expected = example("publisher-hello");
    expected.extend(example("heartbeat"));
    assert_eq!(hex(&out), hex(&expected), "Hello with the first heartbeat pipelined");

    publisher.handle_input(now, &example("welcome-publisher")).unwrap();
    let Some(PublisherEvent::Accepted(w)) = publisher.poll_event() else { panic!("not accepted") };
    assert_eq!(Owned::Welcome(w), examples()[3].frame);
}

#[test]
fn browser_sends_the_documented_hello() {
    let mut config = BrowserConfig::new("quake3");
    config.resume = Some(Resume { epoch: 0x5eed, cursor: 1234 });
    let mut browser = Browser::new(config);
    let mut out = Vec::new();
    assert!(browser.poll_transmit(Instant::now(), &mut out));
    assert_eq!(hex(&out), hex(&example("browser-hello")));
}

#[test]
fn registry_sends_the_documented_welcome_and_snapshot() {
    // An IPv4-mapped IPv6 peer address is the same publisher as its IPv4 form.
    for peer in ["192.0.2.7:50000", "[::ffff:192.0.2.7]:50000"] {
        let now = Instant::now();
        let mut registry = Registry::new(RegistryConfig::default(), 0x5eed);
        let p = registry.accept(now, peer.parse().unwrap()).unwrap();
        let mut input = example("publisher-hello");
        input.extend(example("heartbeat"));
        registry.handle_input(p, now, &input).unwrap();
        let mut out = Vec::new();
        while registry.poll_transmit(p, now, &mut out) {}
        assert_eq!(hex(&out), hex(&example("welcome-publisher")), "Welcome to a publisher from {peer}");

        // A browser without a resume point: Welcome, the snapshot, Synced.
        let b = registry.accept(now, v6("[2001:db8::1]:40000")).unwrap();
        let hello = Owned::Hello {
            version: 1,
            role: Role::Browser,
            namespace: "quake3".into(),
            token: Vec::new(),
            declared_port: None,
            resume: None,
        };
        registry.handle_input(b, now, &hello.encode()).unwrap();
        out.clear();
        while registry.poll_transmit(b, now, &mut out) {}
        let mut expected = example("welcome-browser");
        expected.extend(example("upsert-ipv4"));
        expected.extend(example("synced-snapshot"));
        assert_eq!(hex(&out), hex(&expected));
    }
}

#[test]
fn registry_sends_the_documented_reject() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default(), 0x5eed);
    registry.set_publish_tokens("quake3", [b"other"]);
    let p = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
    let mut input = example("publisher-hello");
    input.extend(example("heartbeat"));
    let err = registry.handle_input(p, now, &input).unwrap_err();
    assert_eq!(err, Error::Unauthorized);
    assert_eq!(err.code(), ErrorCode::UNAUTHORIZED);
    let mut out = Vec::new();
    while registry.poll_transmit(p, now, &mut out) {}
    assert_eq!(hex(&out), hex(&example("reject")));
    let Some(Event::Closed { code, reason, .. }) = registry.poll_event() else { panic!("not closed") };
    assert_eq!(code, ErrorCode::UNAUTHORIZED);
    assert_eq!(reason, "missing or invalid token for this namespace");
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

const VARINT_EDGES: [u64; 9] = [0, 1, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, varint::MAX];

fn sample_addresses() -> Vec<SocketAddr> {
    vec![
        v4("0.0.0.0:0"),
        v4("192.0.2.7:27960"),
        v4("255.255.255.255:65535"),
        v6("[::]:0"),
        v6("[2001:db8::7]:27960"),
        v6("[::ffff:192.0.2.7]:1"),
        v6("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
    ]
}

/// A broad, deterministic sample of frames of every type.
fn sample_frames() -> Vec<Owned> {
    let large: Vec<u8> = (0..70_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut frames = Vec::new();
    for declared_port in [None, Some(1), Some(27960), Some(u16::MAX)] {
        for resume in
            [None, Some(Resume { epoch: 1, cursor: 0 }), Some(Resume { epoch: varint::MAX, cursor: varint::MAX })]
        {
            for role in [Role::Publisher, Role::Browser] {
                frames.push(Owned::Hello {
                    version: 1,
                    role,
                    namespace: "quake3".into(),
                    token: b"tok".to_vec(),
                    declared_port,
                    resume,
                });
            }
        }
    }
    // Only version 1 round-trips: another version is an error by design
    // (see `other_versions_are_unsupported`).
    for edge in VARINT_EDGES {
        frames.push(Owned::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Browser,
            namespace: "ünïcödé 🎮".into(),
            token: Vec::new(),
            declared_port: None,
            resume: Some(Resume { epoch: edge.max(1), cursor: edge }),
        });
    }
    frames.push(Owned::Hello {
        version: 1,
        role: Role::Publisher,
        namespace: String::new(),
        token: vec![0; 300],
        declared_port: None,
        resume: None,
    });
    for address in sample_addresses() {
        for port_declared in [false, true] {
            frames.push(Owned::Welcome(welcome(Some(PublisherInfo { id: 1, address, port_declared }))));
            for blob in [&b""[..], b"x", &large[..16_384], &large[..]] {
                frames.push(Owned::Upsert { revision: 5, address, port_declared, blob: blob.to_vec() });
            }
        }
        frames.push(Owned::Remove { revision: 6, address });
    }
    for edge in VARINT_EDGES {
        frames.push(Owned::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            epoch: edge,
            max_blob_size: edge,
            heartbeat_interval: Duration::from_millis(edge),
            update_interval: Duration::from_millis(edge),
            entry_ttl: Duration::from_millis(edge),
            publisher: None,
        }));
        frames.push(Owned::Welcome(Welcome {
            publisher: Some(PublisherInfo { id: edge.max(1), address: v6("[2001:db8::1]:443"), port_declared: false }),
            ..welcome(None)
        }));
        frames.push(Owned::Reject { code: ErrorCode(edge), reason: "why".into() });
        frames.push(Owned::Upsert { revision: edge, address: v4("10.0.0.1:1"), port_declared: true, blob: Vec::new() });
        frames.push(Owned::Remove { revision: edge, address: v4("10.0.0.1:1") });
        frames.push(Owned::Synced(edge));
        if !(1..=9).contains(&edge) {
            frames.push(Owned::Unknown { frame_type: edge, payload: vec![0xab; (edge % 100) as usize] });
        }
    }
    for code in ErrorCode::ALL {
        frames.push(Owned::Reject { code: *code, reason: code.to_string() });
    }
    frames.push(Owned::Reject { code: ErrorCode(0x1234), reason: String::new() });
    for blob in [&b""[..], b"\0", &large[..63], &large[..64], &large[..]] {
        frames.push(Owned::Heartbeat(blob.to_vec()));
    }
    frames.extend([Owned::Goodbye, Owned::Reset]);
    frames.push(Owned::Unknown { frame_type: 0x0a, payload: Vec::new() });
    frames.push(Owned::Unknown { frame_type: 0x3fff, payload: large[..20_000].to_vec() });
    frames
}

#[test]
fn every_frame_type_round_trips() {
    let frames = sample_frames();
    for frame in &frames {
        assert_round_trip(frame);
    }
    // Every variant is represented.
    for ty in 0..=9u64 {
        assert!(frames.iter().any(|f| f.frame().frame_type() == FrameType(ty)));
    }
    assert!(frames.iter().any(|f| matches!(f, Owned::Unknown { frame_type, .. } if *frame_type > 9)));
}

#[test]
fn the_whole_sample_decodes_as_one_stream() {
    let frames = sample_frames();
    let wire: Vec<u8> = frames.iter().flat_map(Owned::encode).collect();
    let max = frames.iter().map(|f| split_frame(&f.encode()).2.len()).max().unwrap();
    let decoded = decode_chunks(max, [&wire[..]]);
    assert_eq!(decoded.result, Ok(()));
    assert_eq!(decoded.frames, frames);
    assert_eq!(decoded.buffered, 0);
    // In chunks of a prime size, so cuts fall everywhere in the frames.
    let decoded = decode_chunks(max, wire.chunks(997));
    assert_eq!(decoded.result, Ok(()));
    assert_eq!(decoded.frames, frames);
}

/// Values the encoding cannot tell apart from an absent field.
#[test]
fn absent_is_zero() {
    // Declared port 0 is "not declared"; a resume epoch of 0 is "no resume",
    // whatever the cursor; a publisher id of 0 is "no publisher part".
    let hello = Owned::Hello {
        version: 1,
        role: Role::Publisher,
        namespace: "q".into(),
        token: Vec::new(),
        declared_port: Some(0),
        resume: Some(Resume { epoch: 0, cursor: 7 }),
    };
    let Owned::Hello { declared_port, resume, .. } = decode_one(&hello.encode()) else { panic!() };
    assert_eq!((declared_port, resume), (None, None));
    let w = Owned::Welcome(welcome(Some(PublisherInfo { id: 0, address: v4("1.2.3.4:5"), port_declared: true })));
    let Owned::Welcome(w) = decode_one(&w.encode()) else { panic!() };
    assert_eq!(w.publisher, None);
    // Durations travel as whole milliseconds.
    let w = Owned::Welcome(Welcome { entry_ttl: Duration::from_micros(1500), ..welcome(None) });
    let Owned::Welcome(w) = decode_one(&w.encode()) else { panic!() };
    assert_eq!(w.entry_ttl, Duration::from_millis(1));
}

#[test]
fn flags_bits_other_than_port_declared_are_ignored() {
    // Upsert 192.0.2.7:27960, flags 0xfe (bit 0 clear), empty blob.
    let wire = unhex("06 0a 01 04 c0 00 02 07 6d 38 fe 00");
    let Owned::Upsert { port_declared, .. } = decode_one(&wire) else { panic!() };
    assert!(!port_declared);
    let wire = unhex("06 0a 01 04 c0 00 02 07 6d 38 ff 00");
    let Owned::Upsert { port_declared, .. } = decode_one(&wire) else { panic!() };
    assert!(port_declared);
}

#[test]
fn non_minimal_varints_are_accepted() {
    // Synced { revision: 301 } with an 8-byte revision, a 2-byte type and a 2-byte length.
    let wire = unhex("40 08 40 08 c0 00 00 00 00 00 01 2d");
    let decoded = decode_chunks(64, [&wire[..]]);
    assert_eq!(decoded.result, Ok(()));
    assert_eq!(decoded.frames, [Owned::Synced(301)]);
    // A Heartbeat whose blob length takes 4 bytes.
    let wire = unhex("04 07 80 00 00 03 61 62 63");
    assert_eq!(decode_one(&wire), Owned::Heartbeat(b"abc".to_vec()));
}

// ---------------------------------------------------------------------------
// Forward compatibility and malformed input
// ---------------------------------------------------------------------------

#[test]
fn trailing_bytes_in_known_frames_are_ignored() {
    for ex in examples() {
        let wire = unhex(ex.hex);
        let (frame_type, _, payload) = split_frame(&wire);
        for extra in [&[0u8][..], &[0xff, 0x00, 0xab], &[0x40; 100]] {
            let mut longer = payload.to_vec();
            longer.extend_from_slice(extra);
            let decoded = decode_one(&raw_frame(frame_type, &longer));
            match &ex.frame {
                Owned::Unknown { .. } => assert_eq!(decoded, Owned::Unknown { frame_type, payload: longer }),
                known => assert_eq!(&decoded, known, "{} with trailing bytes", ex.name),
            }
        }
    }
}

#[test]
fn unknown_frame_types_decode_to_unknown() {
    for frame_type in [0, 0x0a, 0x3f, 0x40, 0x1234, varint::MAX] {
        for payload in [&b""[..], b"\x01\x02\x03"] {
            let wire = raw_frame(frame_type, payload);
            assert_eq!(decode_one(&wire), Owned::Unknown { frame_type, payload: payload.to_vec() });
        }
    }
    assert_eq!(FrameType(0x40).to_string(), "unknown (0x40)");
}

/// Every role skips unknown frames, in every state, even before Hello/Welcome.
#[test]
fn roles_skip_unknown_frames() {
    let now = Instant::now();
    let unknown = example("unknown");

    let mut registry = Registry::new(RegistryConfig::default(), 0x5eed);
    let p = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
    let mut input = unknown.clone();
    input.extend(example("publisher-hello"));
    input.extend(&unknown);
    input.extend(example("heartbeat"));
    input.extend(&unknown);
    registry.handle_input(p, now, &input).unwrap();
    assert!(matches!(registry.poll_event(), Some(Event::Accepted { role: Role::Publisher, .. })));
    assert_eq!(registry.servers("quake3").count(), 1);

    let mut publisher = Publisher::new(PublisherConfig::new("quake3"), now);
    let mut out = Vec::new();
    let _ = publisher.poll_transmit(now, &mut out);
    let mut input = unknown.clone();
    input.extend(example("welcome-publisher"));
    input.extend(&unknown);
    publisher.handle_input(now, &input).unwrap();
    assert!(matches!(publisher.poll_event(), Some(PublisherEvent::Accepted(_))));

    let mut browser = Browser::new(BrowserConfig::new("quake3"));
    let _ = browser.poll_transmit(now, &mut out);
    let mut input = unknown.clone();
    input.extend(example("welcome-browser"));
    input.extend(&unknown);
    input.extend(example("upsert-ipv6"));
    input.extend(&unknown);
    input.extend(example("synced"));
    browser.handle_input(now, &input).unwrap();
    assert!(matches!(browser.poll_event(), Some(BrowserEvent::Upsert(_))));
    assert_eq!(browser.poll_event(), Some(BrowserEvent::Synced { revision: 301, snapshot: true }));
}

#[test]
fn every_truncated_payload_is_malformed() {
    for ex in examples() {
        if matches!(ex.frame, Owned::Unknown { .. }) {
            continue;
        }
        let wire = unhex(ex.hex);
        let (frame_type, _, payload) = split_frame(&wire);
        for cut in 0..payload.len() {
            let short = &payload[..cut];
            let expected = FrameType(frame_type);
            match Frame::decode(frame_type, short) {
                Err(DecodeError::Malformed { frame, .. }) => assert_eq!(frame, expected),
                other => panic!("{} cut to {cut} bytes: {other:?}", ex.name),
            }
            // The same through the decoder, with a header that tells the truth
            // about the shorter payload.
            let decoded = decode_chunks(payload.len(), [&raw_frame(frame_type, short)[..]]);
            assert!(decoded.frames.is_empty());
            assert!(
                matches!(decoded.result, Err(DecodeError::Malformed { frame, .. }) if frame == expected),
                "{} cut to {cut}: {:?}",
                ex.name,
                decoded.result
            );
            let error = Error::from(decoded.result.unwrap_err());
            assert_eq!(error.code(), ErrorCode::PROTOCOL_VIOLATION);
        }
    }
}

fn malformed(wire: &str) -> (FrameType, &'static str) {
    let wire = unhex(wire);
    let (frame_type, _, payload) = split_frame(&wire);
    match Frame::decode(frame_type, payload) {
        Err(DecodeError::Malformed { frame, what }) => (frame, what),
        other => panic!("{}: {other:?}", hex(&wire)),
    }
}

#[test]
fn invalid_field_values_are_malformed() {
    // Role 2.
    assert_eq!(malformed("01 08 01 02 01 71 00 00 00 00"), (FrameType::HELLO, "unknown role"));
    // Namespace bytes ff fe are not UTF-8.
    assert_eq!(malformed("01 09 01 00 02 ff fe 00 00 00 00"), (FrameType::HELLO, "namespace is not UTF-8"));
    // Declared port 65536.
    assert_eq!(malformed("01 0b 01 00 01 71 00 80 01 00 00 00 00"), (FrameType::HELLO, "port above 65535"));
    // Reject reason c3 28 is not UTF-8.
    assert_eq!(malformed("03 04 05 02 c3 28"), (FrameType::REJECT, "reason is not UTF-8"));
    // Address families other than 4 and 6, in every frame that carries an address.
    for family in [0u8, 1, 5, 7, 0x41, 0xff] {
        let f = format!("{family:02x}");
        let upsert = format!("06 0a 01 {f} c0 00 02 07 6d 38 00 00");
        assert_eq!(malformed(&upsert), (FrameType::UPSERT, "unknown address family"));
        let remove = format!("07 08 01 {f} c0 00 02 07 6d 38");
        assert_eq!(malformed(&remove), (FrameType::REMOVE, "unknown address family"));
        let welcome = format!("02 0f 01 01 00 00 00 00 01 {f} c0 00 02 07 6d 38 00");
        assert_eq!(malformed(&welcome), (FrameType::WELCOME, "unknown address family"));
    }
    // A length prefix running past the payload.
    assert_eq!(malformed("04 02 05 61").0, FrameType::HEARTBEAT);
    // A length prefix of 2^62 - 1.
    assert_eq!(malformed("04 08 ff ff ff ff ff ff ff ff").0, FrameType::HEARTBEAT);
    // An IPv4 family byte followed by IPv6-sized data is fine: the rest is trailing.
    assert_eq!(
        decode_one(&unhex("07 15 01 04 c0 00 02 07 6d 38 00 00 00 00 00 00 00 00 00 00 00 00 00")),
        Owned::Remove { revision: 1, address: v4("192.0.2.7:27960") }
    );
}

// ---------------------------------------------------------------------------
// Protocol versions: Hello and Welcome are decoded version first
// ---------------------------------------------------------------------------

/// Versions other than 1, in every varint length.
const OTHER_VERSIONS: [u64; 8] = [0, 2, 63, 64, 16_383, 16_384, 1 << 30, varint::MAX];

fn with_version(version: u64, rest: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    varint::put(&mut payload, version);
    payload.extend(unhex(rest));
    payload
}

/// Hello and Welcome frames of `version`: laid out like version 1, with
/// later fields version 1 cannot decode, and ending right after the version.
fn frames_of_version(version: u64) -> Vec<(FrameType, Vec<u8>)> {
    let hello = Owned::Hello {
        version,
        role: Role::Publisher,
        namespace: "quake3".into(),
        token: b"s3cret".to_vec(),
        declared_port: Some(27960),
        resume: None,
    };
    let welcome = Owned::Welcome(Welcome {
        version,
        ..welcome(Some(PublisherInfo { id: 1, address: v4("192.0.2.7:27960"), port_declared: true }))
    });
    vec![
        (FrameType::HELLO, hello.encode()),
        (FrameType::WELCOME, welcome.encode()),
        // Role 9, a namespace that is not UTF-8, the other fields missing.
        (FrameType::HELLO, raw_frame(1, &with_version(version, "09 02 ff fe"))),
        // An 8-byte epoch cut short after 3 bytes.
        (FrameType::WELCOME, raw_frame(2, &with_version(version, "ff ff 01"))),
        (FrameType::HELLO, raw_frame(1, &with_version(version, ""))),
        (FrameType::WELCOME, raw_frame(2, &with_version(version, ""))),
    ]
}

#[test]
fn other_versions_are_unsupported() {
    for version in OTHER_VERSIONS {
        for (frame, wire) in frames_of_version(version) {
            let expected = DecodeError::UnsupportedVersion { frame, version };
            let (frame_type, _, payload) = split_frame(&wire);
            assert_eq!(Frame::decode(frame_type, payload).err(), Some(expected.clone()), "{}", hex(&wire));
            // Through the decoder, cut anywhere: the same error, and no frame.
            for cut in 0..=wire.len() {
                let decoded = decode_chunks(256, [&wire[..cut], &wire[cut..]]);
                assert_eq!(decoded.frames, []);
                assert_eq!(decoded.result, Err(expected.clone()), "{} cut at {cut}", hex(&wire));
            }
            let error = Error::from(expected);
            assert_eq!(error.code(), ErrorCode::UNSUPPORTED_VERSION);
            assert_eq!(
                error.to_string(),
                format!("{frame} of unsupported protocol version {version}; this implementation speaks version 1")
            );
        }
    }
    // The decoder stops at it: the frames before it come out, none after it.
    let mut wire = example("synced");
    wire.extend(&frames_of_version(2)[0].1);
    wire.extend(example("goodbye"));
    let decoded = decode_chunks(256, [&wire[..]]);
    assert_eq!(decoded.frames, [Owned::Synced(301)]);
    assert_eq!(decoded.result, Err(DecodeError::UnsupportedVersion { frame: FrameType::HELLO, version: 2 }));
}

#[test]
fn the_version_field_is_a_varint_like_any_other() {
    // Version 1 in a longer encoding is version 1: the examples decode unchanged.
    for (name, long_one) in [("publisher-hello", "40 01"), ("welcome-publisher", "80 00 00 01")] {
        let wire = example(name);
        let (frame_type, _, payload) = split_frame(&wire);
        assert_eq!(payload[0], 0x01);
        let longer = [&unhex(long_one)[..], &payload[1..]].concat();
        assert_eq!(decode_one(&raw_frame(frame_type, &longer)), decode_one(&wire), "{name}");
    }
    // And 2 is 2 however it is encoded.
    assert_eq!(
        Frame::decode(1, &unhex("c0 00 00 00 00 00 00 02 00 06 71 75 61 6b 65 33 00 00 00 00")).err(),
        Some(DecodeError::UnsupportedVersion { frame: FrameType::HELLO, version: 2 })
    );
    // A version field cut short is malformed, not of another version.
    for payload in ["", "40", "80 00 00", "c0 00 00 00 00 00 00"] {
        for frame_type in [1, 2] {
            assert!(
                matches!(
                    Frame::decode(frame_type, &unhex(payload)),
                    Err(DecodeError::Malformed { frame, .. }) if frame == FrameType(frame_type)
                ),
                "type {frame_type}, payload {payload:?}"
            );
        }
    }
}

proptest! {
    /// A Hello or Welcome whose version is not 1, followed by anything at all.
    #[test]
    fn prop_other_versions_are_unsupported_whatever_follows(
        welcome in any::<bool>(),
        version in arb_varint().prop_filter("not version 1", |v| *v != PROTOCOL_VERSION),
        rest in prop::collection::vec(any::<u8>(), 0..64),
        cuts in cuts(),
    ) {
        let frame = if welcome { FrameType::WELCOME } else { FrameType::HELLO };
        let mut payload = Vec::new();
        varint::put(&mut payload, version);
        payload.extend(&rest);
        let wire = raw_frame(frame.0, &payload);
        let expected: Result<Owned, _> = Err(DecodeError::UnsupportedVersion { frame, version });
        prop_assert_eq!(Frame::decode(frame.0, &payload).map(|f| Owned::of(&f)), expected.clone());
        let cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        let decoded = decode_chunks(256, cut_at(&wire, cuts));
        prop_assert_eq!(decoded.frames, []);
        prop_assert_eq!(decoded.result, expected.map(|_| ()));
    }
}

#[test]
fn registry_closes_other_versions_with_unsupported_version() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default(), 0x5eed);
    for version in OTHER_VERSIONS {
        let reason = format!("Hello of unsupported protocol version {version}; this implementation speaks version 1");
        for (_, hello) in frames_of_version(version).into_iter().filter(|(f, _)| *f == FrameType::HELLO) {
            let c = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
            // A Heartbeat right behind the Hello, in the same input, is ignored.
            let mut input = hello.clone();
            input.extend(example("heartbeat"));
            let err = registry.handle_input(c, now, &input).unwrap_err();
            assert_eq!(err, Error::Decode(DecodeError::UnsupportedVersion { frame: FrameType::HELLO, version }));
            assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
            assert_eq!(err.to_string(), reason);
            // A Reject, then the close with the same code and reason.
            let mut out = Vec::new();
            while registry.poll_transmit(c, now, &mut out) {}
            let decoded = decode_chunks(4096, [&out[..]]);
            assert_eq!(
                decoded.frames,
                [Owned::Reject { code: ErrorCode::UNSUPPORTED_VERSION, reason: reason.clone() }]
            );
            assert_eq!(
                registry.poll_event(),
                Some(Event::Closed { connection: c, code: ErrorCode::UNSUPPORTED_VERSION, reason: reason.clone() })
            );
            assert_eq!(registry.poll_event(), None);
            // Later input on the closing connection is ignored.
            registry.handle_input(c, now, &example("publisher-hello")).unwrap();
            assert_eq!(registry.poll_event(), None);
            registry.remove(c);
            let stats = registry.stats();
            assert_eq!((stats.handshakes, stats.publishers, stats.namespaces, stats.entries), (0, 0, 0, 0));
        }
    }
    // The documented exchange: a version-2 Hello that version 1 could not
    // decode, answered with the documented Reject.
    let c = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
    let err = registry.handle_input(c, now, &unhex(UNSUPPORTED_EXAMPLES[0].hex)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
    let mut out = Vec::new();
    while registry.poll_transmit(c, now, &mut out) {}
    assert_eq!(hex(&out), hex(&example("reject-version")));
    assert!(matches!(registry.poll_event(), Some(Event::Closed { .. })));
    registry.remove(c);

    // The version is read while decoding, before the session's state is looked
    // at: a second Hello from an established publisher is a protocol violation
    // with version 1, UNSUPPORTED_VERSION with another.
    for (version, code) in [(1, ErrorCode::PROTOCOL_VIOLATION), (2, ErrorCode::UNSUPPORTED_VERSION)] {
        let p = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
        registry.handle_input(p, now, &example("publisher-hello")).unwrap();
        assert!(matches!(registry.poll_event(), Some(Event::Accepted { .. })));
        let again = with_version(version, "00 06 71 75 61 6b 65 33 00 00 00 00");
        let err = registry.handle_input(p, now, &raw_frame(1, &again)).unwrap_err();
        assert_eq!(err.code(), code, "second Hello of version {version}");
        assert!(matches!(registry.poll_event(), Some(Event::Closed { code: c, .. }) if c == code));
        registry.remove(p);
    }
}

/// Clients read the Welcome's version first too, and close the connection
/// with UNSUPPORTED_VERSION.
#[test]
fn clients_close_on_a_welcome_of_another_version() {
    let now = Instant::now();
    for version in OTHER_VERSIONS {
        for (frame, welcome) in frames_of_version(version).into_iter().filter(|(f, _)| *f == FrameType::WELCOME) {
            let expected = Error::Decode(DecodeError::UnsupportedVersion { frame, version });

            let mut publisher = Publisher::new(PublisherConfig::new("quake3"), now);
            let mut out = Vec::new();
            assert!(publisher.poll_transmit(now, &mut out));
            let err = publisher.handle_input(now, &welcome).unwrap_err();
            assert_eq!((&err, err.code()), (&expected, ErrorCode::UNSUPPORTED_VERSION));
            assert!(publisher.is_closed());
            assert_eq!(publisher.poll_event(), None);
            assert!(publisher.welcome().is_none());

            let mut browser = Browser::new(BrowserConfig::new("quake3"));
            assert!(browser.poll_transmit(now, &mut out));
            let mut input = welcome.clone();
            input.extend(example("upsert-ipv6"));
            input.extend(example("synced"));
            let err = browser.handle_input(now, &input).unwrap_err();
            assert_eq!((&err, err.code()), (&expected, ErrorCode::UNSUPPORTED_VERSION));
            assert!(browser.is_closed());
            assert_eq!(browser.poll_event(), None);
            assert!(browser.welcome().is_none());
            assert_eq!(browser.servers().count(), 0);
        }
    }
}

// ---------------------------------------------------------------------------
// Publish tokens
// ---------------------------------------------------------------------------

/// A publisher's token longer than `max_token_len` is refused with
/// UNAUTHORIZED, whether or not the namespace requires a token.
#[test]
fn registry_refuses_tokens_longer_than_max_token_len() {
    let now = Instant::now();
    let hello = |role, namespace: &str, token: Vec<u8>| {
        Owned::Hello { version: 1, role, namespace: namespace.into(), token, declared_port: Some(27960), resume: None }
            .encode()
    };
    for config in [RegistryConfig::default(), RegistryConfig { max_token_len: 8, ..RegistryConfig::default() }] {
        let max = config.max_token_len;
        let mut registry = Registry::new(config, 0x5eed);
        let mut peers = (1..=250u8).map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 50000));
        let mut try_hello = |registry: &mut Registry, role, namespace: &str, token: Vec<u8>| {
            let c = registry.accept(now, peers.next().unwrap()).unwrap();
            let result = registry.handle_input(c, now, &hello(role, namespace, token));
            let mut out = Vec::new();
            while registry.poll_transmit(c, now, &mut out) {}
            match registry.poll_event() {
                Some(Event::Accepted { .. }) => assert_eq!(result, Ok(())),
                Some(Event::Closed { code, .. }) => assert_eq!(result.as_ref().err().map(Error::code), Some(code)),
                other => panic!("{other:?}"),
            }
            (result, out)
        };

        // No tokens configured for the namespace: a token of up to `max`
        // bytes is accepted and ignored; one byte more is refused.
        assert_eq!(try_hello(&mut registry, Role::Publisher, "quake3", vec![b'a'; max]).0, Ok(()));
        assert_eq!(try_hello(&mut registry, Role::Publisher, "quake3", Vec::new()).0, Ok(()));
        let (result, out) = try_hello(&mut registry, Role::Publisher, "quake3", vec![b'a'; max + 1]);
        assert_eq!(result, Err(Error::Unauthorized));
        assert_eq!(hex(&out), hex(&example("reject")), "the documented Reject");
        // Likewise in a namespace that does not exist yet: it is not created.
        let (result, _) = try_hello(&mut registry, Role::Publisher, "openarena", vec![0; max + 1]);
        assert_eq!(result, Err(Error::Unauthorized));
        assert!(!registry.namespaces().any(|ns| &*ns.name == "openarena"));
        // The namespace is checked first.
        let (result, _) = try_hello(&mut registry, Role::Publisher, "", vec![0; max + 1]);
        assert_eq!(result.map_err(|e| e.code()), Err(ErrorCode::INVALID_NAMESPACE));
        // Browsers are never asked for a token: its length is not checked.
        assert_eq!(try_hello(&mut registry, Role::Browser, "quake3", vec![b'a'; max + 1]).0, Ok(()));

        // Configured tokens: a configured token longer than `max` can never be presented.
        registry.set_publish_tokens("quake3", [vec![b'a'; max + 1], vec![b'b'; max]]);
        assert_eq!(
            try_hello(&mut registry, Role::Publisher, "quake3", vec![b'a'; max + 1]).0,
            Err(Error::Unauthorized)
        );
        assert_eq!(try_hello(&mut registry, Role::Publisher, "quake3", vec![b'a'; max]).0, Err(Error::Unauthorized));
        assert_eq!(try_hello(&mut registry, Role::Publisher, "quake3", vec![b'b'; max]).0, Ok(()));
        registry.check_invariants().unwrap();
    }
}

// ---------------------------------------------------------------------------
// FrameDecoder
// ---------------------------------------------------------------------------

#[test]
fn frame_too_large_is_detected_from_the_header() {
    // A Heartbeat header declaring 65 payload bytes, with none of them sent.
    let decoded = decode_chunks(64, [&[0x04, 0x40, 0x41][..]]);
    assert_eq!(decoded.result, Err(DecodeError::FrameTooLarge { frame_type: 4, len: 65, max: 64 }));
    // One byte at a time: the error comes with the header's last byte.
    let mut decoder = FrameDecoder::new(64);
    let mut no_frame = |_: Frame<'_>| -> Result<(), DecodeError> { panic!("no frame expected") };
    assert_eq!(decoder.decode(&[0x04], &mut no_frame), Ok(()));
    assert_eq!(decoder.decode(&[0x40], &mut no_frame), Ok(()));
    assert_eq!(
        decoder.decode(&[0x41], &mut no_frame),
        Err(DecodeError::FrameTooLarge { frame_type: 4, len: 65, max: 64 })
    );
    // Exactly the maximum is fine and waits for the payload.
    let mut decoder = FrameDecoder::new(64);
    assert_eq!(decoder.decode(&[0x04, 0x40, 0x40], &mut no_frame), Ok(()));
    assert_eq!(decoder.buffered(), 3);
    // Unknown frame types count too, and so do lengths beyond usize.
    let decoded = decode_chunks(64, [&unhex("40 40 ff ff ff ff ff ff ff ff")[..]]);
    assert_eq!(decoded.result, Err(DecodeError::FrameTooLarge { frame_type: 0x40, len: varint::MAX, max: 64 }));
    // After a complete frame in the same input.
    let mut wire = example("synced");
    wire.extend([0x09, 0x40, 0x41]);
    let decoded = decode_chunks(64, [&wire[..]]);
    assert_eq!(decoded.frames, [Owned::Synced(301)]);
    assert_eq!(decoded.result, Err(DecodeError::FrameTooLarge { frame_type: 9, len: 65, max: 64 }));
    assert_eq!(Error::from(decoded.result.unwrap_err()).code(), ErrorCode::FRAME_TOO_LARGE);
}

#[test]
fn registry_rejects_a_frame_too_large_from_its_header() {
    let now = Instant::now();
    let mut registry = Registry::new(RegistryConfig::default(), 0x5eed);
    let c = registry.accept(now, v4("192.0.2.7:50000")).unwrap();
    // Heartbeat header declaring 8257 bytes (0x2041): one more than the default maximum.
    let err = registry.handle_input(c, now, &[0x04, 0x60, 0x41]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
    let mut out = Vec::new();
    while registry.poll_transmit(c, now, &mut out) {}
    let decoded = decode_chunks(4096, [&out[..]]);
    assert!(matches!(&decoded.frames[..], [Owned::Reject { code: ErrorCode::FRAME_TOO_LARGE, .. }]));

    // With the defaults, blobs of 8193..=8254 bytes fit the frame limit and get
    // BLOB_TOO_LARGE; from 8255 bytes on the frame itself is too large.
    for (len, code) in [
        (8192, None),
        (8193, Some(ErrorCode::BLOB_TOO_LARGE)),
        (8254, Some(ErrorCode::BLOB_TOO_LARGE)),
        (8255, Some(ErrorCode::FRAME_TOO_LARGE)),
    ] {
        let c = registry.accept(now, v4("192.0.2.8:50000")).unwrap();
        registry.handle_input(c, now, &example("publisher-hello")).unwrap();
        let heartbeat = Owned::Heartbeat(vec![0; len]).encode();
        // Only the header: the size is judged before the payload arrives.
        let header_len = heartbeat.len() - split_frame(&heartbeat).2.len();
        let result = registry.handle_input(c, now, &heartbeat[..header_len]);
        let result = result.and_then(|()| registry.handle_input(c, now, &heartbeat[header_len..]));
        assert_eq!(result.err().map(|e| e.code()), code, "blob of {len} bytes");
        registry.remove(c);
    }
}

/// A stream small enough to cut at every position: every example, then a
/// few frames with larger fields.
fn split_stream() -> (Vec<Owned>, Vec<u8>) {
    let mut frames: Vec<Owned> = examples().into_iter().map(|e| e.frame).collect();
    frames.push(Owned::Heartbeat(vec![0x5a; 200]));
    frames.push(Owned::Upsert {
        revision: varint::MAX,
        address: v6("[2001:db8::9]:9"),
        port_declared: true,
        blob: vec![1; 70],
    });
    frames.push(Owned::Unknown { frame_type: 1 << 40, payload: vec![2; 17] });
    frames.push(Owned::Goodbye);
    let wire = frames.iter().flat_map(Owned::encode).collect();
    (frames, wire)
}

#[test]
fn every_single_cut_decodes_the_same_frames() {
    let (frames, wire) = split_stream();
    let max = 256;
    for cut in 0..=wire.len() {
        let decoded = decode_chunks(max, [&wire[..cut], &wire[cut..]]);
        assert_eq!(decoded.result, Ok(()), "cut at {cut}");
        assert_eq!(decoded.frames, frames, "cut at {cut}");
        assert_eq!(decoded.buffered, 0);
    }
}

#[test]
fn every_pair_of_cuts_decodes_the_same_frames() {
    let (frames, wire) = split_stream();
    // All pairs over a prefix holding several complete frames.
    let prefix_frames = 6;
    let prefix: usize = frames[..prefix_frames].iter().map(|f| f.encode().len()).sum();
    for a in 0..=prefix {
        for b in a..=prefix {
            let decoded = decode_chunks(256, [&wire[..a], &wire[a..b], &wire[b..]]);
            assert_eq!(decoded.result, Ok(()));
            assert_eq!(decoded.frames, frames, "cuts at {a} and {b}");
        }
    }
}

#[test]
fn byte_at_a_time_decodes_the_same_frames() {
    let (frames, wire) = split_stream();
    let decoded = decode_chunks(256, wire.chunks(1));
    assert_eq!(decoded.result, Ok(()));
    assert_eq!(decoded.frames, frames);
    // Empty inputs between the bytes change nothing.
    let mut chunks: Vec<&[u8]> = Vec::new();
    for byte in wire.chunks(1) {
        chunks.extend([&[][..], byte, &[][..]]);
    }
    assert_eq!(decode_chunks(256, chunks).frames, frames);
}

#[test]
fn decoder_holds_at_most_one_frame() {
    // Frames of exactly the maximum payload, with 1-, 2-, 4- and 8-byte types.
    let max = 20_000;
    let mut frames = Vec::new();
    for frame_type in [0x0a, 0x40, 1 << 14, 1 << 30] {
        frames.push(Owned::Unknown { frame_type, payload: vec![7; max] });
        frames.push(Owned::Heartbeat(vec![8; max - 4]));
    }
    let wire: Vec<u8> = frames.iter().flat_map(Owned::encode).collect();
    let mut largest = 0;
    for chunk in [1, 2, 3, 15, 16, 17, 1000, max - 1, max, max + 1, max + 19, 3 * max] {
        let mut decoder = FrameDecoder::new(max);
        let mut count = 0;
        for piece in wire.chunks(chunk) {
            decoder
                .decode(piece, |_| {
                    count += 1;
                    Ok::<_, DecodeError>(())
                })
                .unwrap();
            largest = largest.max(decoder.buffered());
            assert!(decoder.buffered() <= max + MAX_HEADER_LEN, "chunk {chunk}: {}", decoder.buffered());
        }
        assert_eq!(count, frames.len());
        assert_eq!(decoder.buffered(), 0);
    }
    // The bound is reached: a frame with an 8-byte type and a 4-byte length cut one byte short.
    assert_eq!(largest, 8 + 4 + max - 1);
}

#[test]
fn decoder_passes_on_callback_errors() {
    let (_, wire) = split_stream();
    let mut decoder = FrameDecoder::new(256);
    let mut seen = 0;
    let result = decoder.decode(&wire, |_| {
        seen += 1;
        if seen == 3 {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    });
    assert_eq!(result, Err(Error::ShuttingDown));
    assert_eq!(seen, 3);
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn arb_varint() -> impl Strategy<Value = u64> {
    prop_oneof![0..64u64, 0..16_384u64, 0..(1u64 << 30), 0..=varint::MAX, prop::sample::select(VARINT_EDGES.to_vec())]
}

fn arb_nonzero_varint() -> impl Strategy<Value = u64> {
    arb_varint().prop_map(|v| v.max(1))
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
    ]
}

fn arb_blob() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..100),
        1 => prop::collection::vec(any::<u8>(), 16_380..16_400),
    ]
}

fn arb_millis() -> impl Strategy<Value = Duration> {
    arb_varint().prop_map(Duration::from_millis)
}

/// Any frame that round-trips: every type, with Hello and Welcome of
/// version 1 (another version is an error by design, tested on its own).
fn arb_frame() -> impl Strategy<Value = Owned> {
    let hello = (
        Just(PROTOCOL_VERSION),
        any::<bool>(),
        ".{0,20}",
        prop::collection::vec(any::<u8>(), 0..40),
        prop::option::of(1..=u16::MAX),
        prop::option::of((arb_nonzero_varint(), arb_varint()).prop_map(|(epoch, cursor)| Resume { epoch, cursor })),
    )
        .prop_map(|(version, browser, namespace, token, declared_port, resume)| Owned::Hello {
            version,
            role: if browser { Role::Browser } else { Role::Publisher },
            namespace,
            token,
            declared_port,
            resume,
        });
    let publisher = prop::option::of(
        (arb_nonzero_varint(), arb_addr(), any::<bool>()).prop_map(|(id, address, port_declared)| PublisherInfo {
            id,
            address,
            port_declared,
        }),
    );
    let welcome =
        (Just(PROTOCOL_VERSION), arb_varint(), arb_varint(), arb_millis(), arb_millis(), arb_millis(), publisher)
            .prop_map(|(version, epoch, max_blob_size, heartbeat_interval, update_interval, entry_ttl, publisher)| {
                Owned::Welcome(Welcome {
                    version,
                    epoch,
                    max_blob_size,
                    heartbeat_interval,
                    update_interval,
                    entry_ttl,
                    publisher,
                })
            });
    prop_oneof![
        hello,
        welcome,
        (arb_varint(), ".{0,40}").prop_map(|(code, reason)| Owned::Reject { code: ErrorCode(code), reason }),
        arb_blob().prop_map(Owned::Heartbeat),
        Just(Owned::Goodbye),
        (arb_varint(), arb_addr(), any::<bool>(), arb_blob()).prop_map(|(revision, address, port_declared, blob)| {
            Owned::Upsert { revision, address, port_declared, blob }
        }),
        (arb_varint(), arb_addr()).prop_map(|(revision, address)| Owned::Remove { revision, address }),
        arb_varint().prop_map(Owned::Synced),
        Just(Owned::Reset),
        (arb_varint().prop_filter("known type", |t| !(1..=9).contains(t)), arb_blob())
            .prop_map(|(frame_type, payload)| Owned::Unknown { frame_type, payload }),
    ]
}

/// Re-encodes a decoded frame and checks it decodes to itself.
fn assert_stable(frame: &Owned) {
    let wire = frame.encode();
    assert_eq!(&decode_one(&wire), frame, "re-encoded as {}", hex(&wire));
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<usize>(), 0..12)
}

proptest! {
    #[test]
    fn prop_frames_round_trip(frame in arb_frame()) {
        let wire = frame.encode();
        let (frame_type, _, payload) = split_frame(&wire);
        prop_assert_eq!(Owned::of(&Frame::decode(frame_type, payload).unwrap()), frame.clone());
        prop_assert_eq!(decode_one(&wire), frame);
    }

    #[test]
    fn prop_random_splits_decode_the_same_frames(
        frames in prop::collection::vec(arb_frame(), 1..16),
        cuts in cuts(),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(Owned::encode).collect();
        let max = frames.iter().map(|f| split_frame(&f.encode()).2.len()).max().unwrap();
        let cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        let decoded = decode_chunks(max, cut_at(&wire, cuts));
        prop_assert_eq!(decoded.result, Ok(()));
        prop_assert_eq!(decoded.frames, frames);
        prop_assert_eq!(decoded.buffered, 0);
    }

    /// Arbitrary bytes, cut anywhere: no panic, the same outcome however the
    /// input is cut, and every decoded frame survives encode → decode.
    #[test]
    fn prop_arbitrary_bytes_never_panic(
        wire in prop::collection::vec(any::<u8>(), 0..600),
        max in 0usize..300,
        cuts in cuts(),
    ) {
        let whole = decode_chunks(max, [&wire[..]]);
        let cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        let split = decode_chunks(max, cut_at(&wire, cuts));
        prop_assert_eq!(&split, &whole);
        let bytewise = decode_chunks(max, wire.chunks(1));
        prop_assert_eq!(&bytewise, &whole);
        for frame in &whole.frames {
            assert_stable(frame);
        }
    }

    /// Well-framed random payloads of (mostly) known types: exercises the
    /// payload parsers much more than raw bytes do.
    /// Hello and Welcome payloads mostly start with version 1, so that their
    /// later fields are decoded too.
    #[test]
    fn prop_random_payloads_never_panic(
        raw in prop::collection::vec(
            (
                prop_oneof![0u64..=10, arb_varint()],
                prop::bool::weighted(0.8),
                prop::collection::vec(any::<u8>(), 0..48),
            )
                .prop_map(|(t, v1, mut p)| {
                    if v1 && (t == 1 || t == 2) {
                        p.insert(0, 0x01);
                    }
                    (t, p)
                }),
            1..12,
        ),
        cuts in cuts(),
    ) {
        let wire: Vec<u8> = raw.iter().flat_map(|(t, p)| raw_frame(*t, p)).collect();
        let whole = decode_chunks(64, [&wire[..]]);
        let cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        prop_assert_eq!(&decode_chunks(64, cut_at(&wire, cuts)), &whole);
        for frame in &whole.frames {
            assert_stable(frame);
        }
        // Whatever went wrong is a DecodeError of the first frame that did not
        // come out (unknown frames come out too), mapped to one of two codes.
        if let Err(e) = &whole.result {
            let (frame_type, payload) = &raw[whole.frames.len()];
            match e {
                // Payloads of at most 49 bytes against a maximum of 64.
                DecodeError::FrameTooLarge { .. } => prop_assert!(false, "{e}"),
                DecodeError::Malformed { frame, .. } => {
                    prop_assert_eq!(*frame, FrameType(*frame_type));
                    prop_assert!((1..=9).contains(frame_type));
                }
                // Only for a Hello or Welcome, and only from its leading version field.
                DecodeError::UnsupportedVersion { frame, version } => {
                    prop_assert!(*frame_type == 1 || *frame_type == 2);
                    prop_assert_eq!(*frame, FrameType(*frame_type));
                    let varint::Read::Done(leading, _) = varint::read(payload) else {
                        panic!("UnsupportedVersion without a version field");
                    };
                    prop_assert_eq!(*version, leading);
                    prop_assert_ne!(*version, PROTOCOL_VERSION);
                }
            }
            let code = Error::from(e.clone()).code();
            prop_assert!(code == ErrorCode::PROTOCOL_VIOLATION || code == ErrorCode::UNSUPPORTED_VERSION);
        }
    }

    /// A valid frame stream with garbage appended: the valid frames come out,
    /// then whatever the garbage yields, however it is cut.
    #[test]
    fn prop_valid_prefix_then_garbage(
        frames in prop::collection::vec(arb_frame(), 0..6),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        cuts in cuts(),
    ) {
        let mut wire: Vec<u8> = frames.iter().flat_map(Owned::encode).collect();
        let valid = wire.len();
        wire.extend(&garbage);
        let max = 20_000;
        let whole = decode_chunks(max, [&wire[..]]);
        prop_assert!(whole.frames.len() >= frames.len());
        prop_assert_eq!(&whole.frames[..frames.len()], &frames[..]);
        let cuts = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        prop_assert_eq!(&decode_chunks(max, cut_at(&wire, cuts)), &whole);
        prop_assert!(whole.buffered <= wire.len() - valid);
    }
}
