//! Application error codes and the errors that close a connection.

use std::fmt;
use std::net::IpAddr;

use crate::frame::FrameType;
use crate::Role;

/// A QUIC application error code, carried in `Reject` frames and in the
/// CONNECTION_CLOSE that ends a metaserve connection.
///
/// The codes are part of the wire protocol (see `docs/PROTOCOL.md`); a
/// receiver must accept codes it does not know.
///
/// ```
/// use metaserve_proto::ErrorCode;
/// assert_eq!(ErrorCode::BLOB_TOO_LARGE.0, 0x07);
/// assert_eq!(ErrorCode::BLOB_TOO_LARGE.to_string(), "BLOB_TOO_LARGE");
/// assert_eq!(ErrorCode(0x1234).to_string(), "0x1234");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u64);

macro_rules! error_codes {
    ($($(#[$doc:meta])* $name:ident = $value:expr,)*) => {
        impl ErrorCode {
            $($(#[$doc])* pub const $name: ErrorCode = ErrorCode($value);)*

            /// Every code this version of the protocol defines, in order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code's name as written in the specification, if it is known.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(ErrorCode::$name => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// Graceful close: the peer said Goodbye, or the session ended normally.
    NO_ERROR = 0x00,
    /// A frame that is malformed, or not allowed in the current state or direction.
    PROTOCOL_VIOLATION = 0x01,
    /// A frame whose declared payload length exceeds the receiver's maximum.
    FRAME_TOO_LARGE = 0x02,
    /// The Hello names a protocol version the server does not speak.
    UNSUPPORTED_VERSION = 0x03,
    /// No Hello arrived within the handshake timeout.
    HANDSHAKE_TIMEOUT = 0x04,
    /// The namespace requires a publish token and the Hello's token is missing or wrong.
    UNAUTHORIZED = 0x05,
    /// The namespace is empty, too long, or contains control characters.
    INVALID_NAMESPACE = 0x06,
    /// A heartbeat blob larger than the server's maximum blob size.
    BLOB_TOO_LARGE = 0x07,
    /// Too many publishers (or browsers) connected from this IP address.
    IP_LIMIT = 0x08,
    /// The server's total of publishers, browsers or pending handshakes is reached.
    SERVER_FULL = 0x09,
    /// The Hello would create a namespace beyond the server's maximum.
    NAMESPACE_LIMIT = 0x0a,
    /// The publisher sent no heartbeat within the entry TTL.
    HEARTBEAT_TIMEOUT = 0x0b,
    /// A newer connection took over this publisher's address.
    REPLACED = 0x0c,
    /// The server is shutting down.
    SHUTTING_DOWN = 0x0d,
    /// The peer's address is banned by the operator (`Registry::set_bans`).
    BANNED = 0x0e,
    /// The browser's list would exceed its configured maximum number of entries.
    LIST_TOO_LARGE = 0x0f,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#x}", self.0),
        }
    }
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame header declares a payload longer than the configured maximum.
    #[error("frame of type {frame_type:#x} declares {len} payload bytes, more than the maximum of {max}")]
    FrameTooLarge {
        /// The frame's type, as sent.
        frame_type: u64,
        /// The declared payload length.
        len: u64,
        /// The receiver's maximum payload length.
        max: usize,
    },
    /// A Hello or Welcome of another protocol version: its remaining fields
    /// may be laid out differently, so they are not decoded.
    #[error("{frame} of unsupported protocol version {version}; this implementation speaks version 1")]
    UnsupportedVersion {
        /// Hello or Welcome.
        frame: FrameType,
        /// The version the peer speaks.
        version: u64,
    },
    /// A known frame whose payload does not follow the specification.
    #[error("malformed {frame} frame: {what}")]
    Malformed {
        /// The frame's type.
        frame: FrameType,
        /// What was wrong.
        what: &'static str,
    },
}

/// Why a connection is closed: every variant maps to one [`ErrorCode`], and its
/// `Display` text is the reason sent to the peer.
///
/// ```
/// use metaserve_proto::{Error, ErrorCode};
/// let err = Error::BlobTooLarge { len: 9000, max: 8192 };
/// assert_eq!(err.code(), ErrorCode::BLOB_TOO_LARGE);
/// assert_eq!(err.to_string(), "heartbeat of 9000 bytes exceeds the maximum of 8192");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The byte stream did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A well-formed frame arrived where the protocol does not allow it.
    #[error("unexpected {frame} frame {context}")]
    UnexpectedFrame {
        /// The frame's type.
        frame: FrameType,
        /// Where it arrived, e.g. "before Hello".
        context: &'static str,
    },
    /// No Hello within the handshake timeout.
    #[error("no Hello within the handshake timeout")]
    HandshakeTimeout,
    /// Missing or wrong publish token.
    #[error("missing or invalid token for this namespace")]
    Unauthorized,
    /// The namespace is not acceptable.
    #[error("invalid namespace: {0}")]
    InvalidNamespace(&'static str),
    /// A heartbeat larger than the maximum blob size.
    #[error("heartbeat of {len} bytes exceeds the maximum of {max}")]
    BlobTooLarge {
        /// The blob's size.
        len: usize,
        /// The maximum in force.
        max: usize,
    },
    /// The per-IP limit for this role is reached.
    #[error("too many {role}s from {ip} (limit {max})")]
    IpLimit {
        /// The role the peer asked for.
        role: Role,
        /// The peer's IP address.
        ip: IpAddr,
        /// The limit in force.
        max: usize,
    },
    /// Too many connections from one address, or from one network (its
    /// IPv4 /24 or IPv6 /48), have not sent their Hello yet: one source
    /// cannot hold the pending-handshake table for everyone.
    #[error("too many pending handshakes from {} (limit {max})", Scope(*.from, *.prefix_len))]
    HandshakeLimit {
        /// The peer's IP address, or its network's address.
        from: IpAddr,
        /// `None` for the per-address limit; the network's prefix length
        /// (24 or 48) for the per-network one.
        prefix_len: Option<u8>,
        /// The limit in force.
        max: usize,
    },
    /// A server-wide limit is reached.
    #[error("server full: limit of {max} {what} reached")]
    ServerFull {
        /// What is full: "publishers", "browsers" or "pending handshakes".
        what: &'static str,
        /// The limit in force.
        max: usize,
    },
    /// Creating the namespace would exceed the maximum number of namespaces.
    #[error("namespace limit of {max} reached")]
    NamespaceLimit {
        /// The limit in force.
        max: usize,
    },
    /// No heartbeat within the entry TTL.
    #[error("no heartbeat within the entry TTL")]
    HeartbeatTimeout,
    /// The client finished its session stream in the middle of a frame.
    #[error("session stream ended inside a frame ({buffered} bytes of it received)")]
    StreamEndedInFrame {
        /// Bytes of the incomplete frame that had arrived.
        buffered: usize,
    },
    /// A newer connection took over this publisher's address.
    #[error("replaced by a newer connection from the same address")]
    Replaced,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// The peer's address (or, for a publisher, its entry's address) is
    /// banned by the operator: see [`Registry::set_bans`](crate::Registry::set_bans).
    #[error("banned: {reason}")]
    Banned {
        /// The operator's reason for the ban.
        reason: String,
    },
    /// The browser's list reached its maximum size.
    #[error("server list exceeds the maximum of {max} entries")]
    ListTooLarge {
        /// The browser's configured maximum.
        max: usize,
    },
}

impl Error {
    /// The application error code that closes the connection for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Decode(DecodeError::FrameTooLarge { .. }) => ErrorCode::FRAME_TOO_LARGE,
            Error::Decode(DecodeError::Malformed { .. })
            | Error::UnexpectedFrame { .. }
            | Error::StreamEndedInFrame { .. } => ErrorCode::PROTOCOL_VIOLATION,
            Error::Decode(DecodeError::UnsupportedVersion { .. }) => ErrorCode::UNSUPPORTED_VERSION,
            Error::HandshakeTimeout => ErrorCode::HANDSHAKE_TIMEOUT,
            Error::Unauthorized => ErrorCode::UNAUTHORIZED,
            Error::InvalidNamespace(_) => ErrorCode::INVALID_NAMESPACE,
            Error::BlobTooLarge { .. } => ErrorCode::BLOB_TOO_LARGE,
            Error::IpLimit { .. } | Error::HandshakeLimit { .. } => ErrorCode::IP_LIMIT,
            Error::ServerFull { .. } => ErrorCode::SERVER_FULL,
            Error::NamespaceLimit { .. } => ErrorCode::NAMESPACE_LIMIT,
            Error::HeartbeatTimeout => ErrorCode::HEARTBEAT_TIMEOUT,
            Error::Replaced => ErrorCode::REPLACED,
            Error::ShuttingDown => ErrorCode::SHUTTING_DOWN,
            Error::Banned { .. } => ErrorCode::BANNED,
            Error::ListTooLarge { .. } => ErrorCode::LIST_TOO_LARGE,
        }
    }
}

/// An address, or a network as `address/prefix`, for messages.
struct Scope(IpAddr, Option<u8>);

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            None => write!(f, "{}", self.0),
            Some(len) => write!(f, "{}/{len}", self.0),
        }
    }
}
