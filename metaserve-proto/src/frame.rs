//! The frames of protocol version 1 and their byte layout.
//!
//! Every frame is `type (varint) | length (varint) | payload (length bytes)`.
//! Payload fields are QUIC varints, length-prefixed byte strings, single
//! bytes, and addresses (see `docs/PROTOCOL.md` for the byte-exact rules).
//! Receivers ignore payload bytes after the fields they know, so later
//! versions can append fields without a new frame type.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BufMut;

use crate::error::{DecodeError, ErrorCode};
use crate::varint;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// The ALPN protocol identifier of version 1.
pub const ALPN: &[u8] = b"metaserve/1";

/// Largest header a frame can have: two 8-byte varints.
pub const MAX_HEADER_LEN: usize = 16;

/// A frame type as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameType(pub u64);

impl FrameType {
    /// Client → server: first frame of every session.
    pub const HELLO: FrameType = FrameType(0x01);
    /// Server → client: the Hello was accepted.
    pub const WELCOME: FrameType = FrameType(0x02);
    /// Server → client: the session is refused or closed, with a code and reason.
    pub const REJECT: FrameType = FrameType(0x03);
    /// Publisher → server: the publisher's newest blob.
    pub const HEARTBEAT: FrameType = FrameType(0x04);
    /// Client → server: graceful end of the session.
    pub const GOODBYE: FrameType = FrameType(0x05);
    /// Server → browser: an entry was added or changed.
    pub const UPSERT: FrameType = FrameType(0x06);
    /// Server → browser: an entry was removed.
    pub const REMOVE: FrameType = FrameType(0x07);
    /// Server → browser: the browser's list is consistent up to a revision.
    pub const SYNCED: FrameType = FrameType(0x08);
    /// Server → browser: forget the list; a fresh snapshot follows.
    pub const RESET: FrameType = FrameType(0x09);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            FrameType::HELLO => "Hello",
            FrameType::WELCOME => "Welcome",
            FrameType::REJECT => "Reject",
            FrameType::HEARTBEAT => "Heartbeat",
            FrameType::GOODBYE => "Goodbye",
            FrameType::UPSERT => "Upsert",
            FrameType::REMOVE => "Remove",
            FrameType::SYNCED => "Synced",
            FrameType::RESET => "Reset",
            _ => return None,
        })
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown ({:#x})", self.0),
        }
    }
}

/// The role a client asks for in its Hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A game server publishing its heartbeat.
    Publisher,
    /// A game client receiving the list.
    Browser,
}

impl Role {
    const fn to_wire(self) -> u64 {
        match self {
            Role::Publisher => 0,
            Role::Browser => 1,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Publisher => "publisher",
            Role::Browser => "browser",
        })
    }
}

/// Where a browser left off: the registry epoch and the last revision it has.
///
/// A browser presents it in its Hello after a reconnect to receive only what
/// changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resume {
    /// The registry incarnation the cursor belongs to (never 0).
    pub epoch: u64,
    /// The last revision the browser's list is consistent with.
    pub cursor: u64,
}

/// Hello: the first frame of a session, client → server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Protocol version the client speaks ([`PROTOCOL_VERSION`]).
    pub version: u64,
    /// Publisher or browser.
    pub role: Role,
    /// The game's namespace.
    pub namespace: &'a str,
    /// Publish token; empty means none.
    pub token: &'a [u8],
    /// Publishers: the game port browsers should use, if not the observed one.
    pub declared_port: Option<u16>,
    /// Browsers: where to resume from.
    pub resume: Option<Resume>,
}

/// The publisher-specific part of a [`Welcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherInfo {
    /// Server-assigned id of this publisher session (never 0).
    pub id: u64,
    /// The address browsers see for this publisher.
    pub address: SocketAddr,
    /// Whether the port of `address` was declared in the Hello.
    pub port_declared: bool,
}

/// Welcome: the server accepted the Hello and states the limits in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the server speaks.
    pub version: u64,
    /// The registry incarnation; cursors are valid only within one epoch.
    pub epoch: u64,
    /// Largest heartbeat blob the server accepts.
    pub max_blob_size: u64,
    /// Publishers send heartbeats at most this often.
    pub heartbeat_interval: Duration,
    /// Browsers receive changes at most this often.
    pub update_interval: Duration,
    /// An entry without a heartbeat for this long is removed.
    pub entry_ttl: Duration,
    /// Present in the Welcome to a publisher.
    pub publisher: Option<PublisherInfo>,
}

/// Reject: the server refuses or ends the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject<'a> {
    /// Why, as a code.
    pub code: ErrorCode,
    /// Why, for humans.
    pub reason: &'a str,
}

/// Upsert: an entry was added or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert<'a> {
    /// The entry's revision.
    pub revision: u64,
    /// The publisher's address: the entry's key.
    pub address: SocketAddr,
    /// Whether the port was declared by the publisher.
    pub port_declared: bool,
    /// The publisher's newest heartbeat.
    pub blob: &'a [u8],
}

/// One decoded frame, borrowing from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Reject`].
    Reject(Reject<'a>),
    /// The publisher's newest blob.
    Heartbeat {
        /// The blob, opaque to metaserve.
        blob: &'a [u8],
    },
    /// Graceful end of the session.
    Goodbye,
    /// See [`Upsert`].
    Upsert(Upsert<'a>),
    /// An entry was removed.
    Remove {
        /// The removal's revision.
        revision: u64,
        /// The removed entry's address.
        address: SocketAddr,
    },
    /// The browser's list is consistent with the registry up to `revision`.
    Synced {
        /// The revision to present when resuming.
        revision: u64,
    },
    /// Forget the list; a fresh snapshot follows.
    Reset,
    /// A frame type this version does not know; receivers skip it.
    Unknown {
        /// The frame's type.
        frame_type: u64,
        /// Its payload.
        payload: &'a [u8],
    },
}

const FLAG_PORT_DECLARED: u8 = 0x01;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

fn bytes_len(len: usize) -> usize {
    varint::len(len as u64) + len
}

fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

fn put_bytes<B: BufMut + ?Sized>(buf: &mut B, bytes: &[u8]) {
    varint::put(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

fn put_addr<B: BufMut + ?Sized>(buf: &mut B, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(FAMILY_V4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(FAMILY_V6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(addr.port());
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Frame<'_> {
    /// The frame's type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::HELLO,
            Frame::Welcome(_) => FrameType::WELCOME,
            Frame::Reject(_) => FrameType::REJECT,
            Frame::Heartbeat { .. } => FrameType::HEARTBEAT,
            Frame::Goodbye => FrameType::GOODBYE,
            Frame::Upsert(_) => FrameType::UPSERT,
            Frame::Remove { .. } => FrameType::REMOVE,
            Frame::Synced { .. } => FrameType::SYNCED,
            Frame::Reset => FrameType::RESET,
            Frame::Unknown { frame_type, .. } => FrameType(*frame_type),
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Frame::Hello(h) => {
                varint::len(h.version)
                    + varint::len(h.role.to_wire())
                    + bytes_len(h.namespace.len())
                    + bytes_len(h.token.len())
                    + varint::len(h.declared_port.map_or(0, u64::from))
                    + h.resume.map_or(2, |r| varint::len(r.epoch) + varint::len(r.cursor))
            }
            Frame::Welcome(w) => {
                varint::len(w.version)
                    + varint::len(w.epoch)
                    + varint::len(w.max_blob_size)
                    + varint::len(millis(w.heartbeat_interval))
                    + varint::len(millis(w.update_interval))
                    + varint::len(millis(w.entry_ttl))
                    + w.publisher.map_or(1, |p| varint::len(p.id) + addr_len(&p.address) + 1)
            }
            Frame::Reject(r) => varint::len(r.code.0) + bytes_len(r.reason.len()),
            Frame::Heartbeat { blob } => bytes_len(blob.len()),
            Frame::Goodbye | Frame::Reset => 0,
            Frame::Upsert(u) => varint::len(u.revision) + addr_len(&u.address) + 1 + bytes_len(u.blob.len()),
            Frame::Remove { revision, address } => varint::len(*revision) + addr_len(address),
            Frame::Synced { revision } => varint::len(*revision),
            Frame::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Total encoded size of the frame, header included.
    pub fn encoded_len(&self) -> usize {
        let payload = self.payload_len();
        varint::len(self.frame_type().0) + varint::len(payload as u64) + payload
    }

    /// Appends the encoded frame to `buf`.
    ///
    /// ```
    /// use metaserve_proto::frame::Frame;
    /// let mut buf = Vec::new();
    /// Frame::Synced { revision: 300 }.encode(&mut buf);
    /// assert_eq!(buf, [0x08, 0x02, 0x41, 0x2c]);
    /// ```
    pub fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        varint::put(buf, self.frame_type().0);
        varint::put(buf, self.payload_len() as u64);
        match self {
            Frame::Hello(h) => {
                varint::put(buf, h.version);
                varint::put(buf, h.role.to_wire());
                put_bytes(buf, h.namespace.as_bytes());
                put_bytes(buf, h.token);
                varint::put(buf, h.declared_port.map_or(0, u64::from));
                let (epoch, cursor) = h.resume.map_or((0, 0), |r| (r.epoch, r.cursor));
                varint::put(buf, epoch);
                varint::put(buf, cursor);
            }
            Frame::Welcome(w) => {
                varint::put(buf, w.version);
                varint::put(buf, w.epoch);
                varint::put(buf, w.max_blob_size);
                varint::put(buf, millis(w.heartbeat_interval));
                varint::put(buf, millis(w.update_interval));
                varint::put(buf, millis(w.entry_ttl));
                match &w.publisher {
                    None => varint::put(buf, 0),
                    Some(p) => {
                        varint::put(buf, p.id);
                        put_addr(buf, &p.address);
                        buf.put_u8(if p.port_declared { FLAG_PORT_DECLARED } else { 0 });
                    }
                }
            }
            Frame::Reject(r) => {
                varint::put(buf, r.code.0);
                put_bytes(buf, r.reason.as_bytes());
            }
            Frame::Heartbeat { blob } => put_bytes(buf, blob),
            Frame::Goodbye | Frame::Reset => {}
            Frame::Upsert(u) => {
                varint::put(buf, u.revision);
                put_addr(buf, &u.address);
                buf.put_u8(if u.port_declared { FLAG_PORT_DECLARED } else { 0 });
                put_bytes(buf, u.blob);
            }
            Frame::Remove { revision, address } => {
                varint::put(buf, *revision);
                put_addr(buf, address);
            }
            Frame::Synced { revision } => varint::put(buf, *revision),
            Frame::Unknown { payload, .. } => buf.put_slice(payload),
        }
    }
}

impl<'a> Frame<'a> {
    /// Decodes the payload of one frame of type `frame_type`.
    ///
    /// Bytes after the fields this version knows are ignored. Unknown frame
    /// types decode to [`Frame::Unknown`].
    ///
    /// ```
    /// use metaserve_proto::frame::Frame;
    /// let frame = Frame::decode(0x08, &[0x41, 0x2c]).unwrap();
    /// assert_eq!(frame, Frame::Synced { revision: 300 });
    /// ```
    pub fn decode(frame_type: u64, payload: &'a [u8]) -> Result<Self, DecodeError> {
        let ty = FrameType(frame_type);
        let mut r = Reader(payload);
        let malformed = |what| DecodeError::Malformed { frame: ty, what };
        let frame = match ty {
            FrameType::HELLO => {
                let version = r.version(ty)?;
                let role = match r.varint().map_err(malformed)? {
                    0 => Role::Publisher,
                    1 => Role::Browser,
                    _ => return Err(malformed("unknown role")),
                };
                let namespace = std::str::from_utf8(r.bytes().map_err(malformed)?)
                    .map_err(|_| malformed("namespace is not UTF-8"))?;
                let token = r.bytes().map_err(malformed)?;
                let declared_port = match r.varint().map_err(malformed)? {
                    0 => None,
                    port => Some(u16::try_from(port).map_err(|_| malformed("port above 65535"))?),
                };
                let epoch = r.varint().map_err(malformed)?;
                let cursor = r.varint().map_err(malformed)?;
                let resume = (epoch != 0).then_some(Resume { epoch, cursor });
                Frame::Hello(Hello { version, role, namespace, token, declared_port, resume })
            }
            FrameType::WELCOME => {
                let version = r.version(ty)?;
                let epoch = r.varint().map_err(malformed)?;
                let max_blob_size = r.varint().map_err(malformed)?;
                let heartbeat_interval = r.millis().map_err(malformed)?;
                let update_interval = r.millis().map_err(malformed)?;
                let entry_ttl = r.millis().map_err(malformed)?;
                let publisher = match r.varint().map_err(malformed)? {
                    0 => None,
                    id => {
                        let address = r.addr().map_err(malformed)?;
                        let flags = r.u8().map_err(malformed)?;
                        Some(PublisherInfo { id, address, port_declared: flags & FLAG_PORT_DECLARED != 0 })
                    }
                };
                Frame::Welcome(Welcome {
                    version,
                    epoch,
                    max_blob_size,
                    heartbeat_interval,
                    update_interval,
                    entry_ttl,
                    publisher,
                })
            }
            FrameType::REJECT => {
                let code = ErrorCode(r.varint().map_err(malformed)?);
                let reason =
                    std::str::from_utf8(r.bytes().map_err(malformed)?).map_err(|_| malformed("reason is not UTF-8"))?;
                Frame::Reject(Reject { code, reason })
            }
            FrameType::HEARTBEAT => Frame::Heartbeat { blob: r.bytes().map_err(malformed)? },
            FrameType::GOODBYE => Frame::Goodbye,
            FrameType::UPSERT => {
                let revision = r.varint().map_err(malformed)?;
                let address = r.addr().map_err(malformed)?;
                let flags = r.u8().map_err(malformed)?;
                let blob = r.bytes().map_err(malformed)?;
                Frame::Upsert(Upsert { revision, address, port_declared: flags & FLAG_PORT_DECLARED != 0, blob })
            }
            FrameType::REMOVE => {
                Frame::Remove { revision: r.varint().map_err(malformed)?, address: r.addr().map_err(malformed)? }
            }
            FrameType::SYNCED => Frame::Synced { revision: r.varint().map_err(malformed)? },
            FrameType::RESET => Frame::Reset,
            _ => Frame::Unknown { frame_type, payload },
        };
        Ok(frame)
    }
}

/// A cursor over a frame payload; errors name the missing field.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("payload ends inside a field");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        match varint::read(self.0) {
            varint::Read::Done(value, n) => {
                self.take(n)?;
                Ok(value)
            }
            varint::Read::Incomplete => Err("payload ends inside a varint"),
        }
    }

    /// The leading version field of Hello and Welcome: only version 1's
    /// layout is known, so any other version stops decoding here.
    fn version(&mut self, frame: FrameType) -> Result<u64, DecodeError> {
        let version = self.varint().map_err(|what| DecodeError::Malformed { frame, what })?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion { frame, version });
        }
        Ok(version)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        let [b] = self.take(1)? else { return Err("payload ends inside a field") };
        Ok(*b)
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| "length prefix too large")?;
        self.take(len)
    }

    fn millis(&mut self) -> Result<Duration, &'static str> {
        self.varint().map(Duration::from_millis)
    }

    fn addr(&mut self) -> Result<SocketAddr, &'static str> {
        let ip = match self.u8()? {
            FAMILY_V4 => {
                let octets: [u8; 4] = self.take(4)?.try_into().map_err(|_| "short IPv4")?;
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            FAMILY_V6 => {
                let octets: [u8; 16] = self.take(16)?.try_into().map_err(|_| "short IPv6")?;
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return Err("unknown address family"),
        };
        let port: [u8; 2] = self.take(2)?.try_into().map_err(|_| "short port")?;
        Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
    }
}
