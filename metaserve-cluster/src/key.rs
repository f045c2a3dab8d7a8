//! NATS KV keys of entries: `<namespace>.<address>`, reversible and
//! canonical (one key per entry, one entry per key).
//!
//! NATS keys may hold only `A-Z a-z 0-9 - _ = / .`, with `.` separating
//! non-empty tokens. The namespace token keeps `A-Z a-z 0-9 - _` and writes
//! every other byte of its UTF-8 as `=` and two uppercase hex digits; the
//! address token is the IPv4 address's four decimal octets, or the IPv6
//! address's eight hexadecimal groups (lowercase, no leading zeros, not
//! compressed), joined by `-`, then `_` and the decimal port. An IPv4-mapped
//! IPv6 address is keyed as its IPv4 address, as the registry keys it.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a string is not the key of an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not two tokens separated by one `.`.
    #[error("not <namespace>.<address>: {0:?}")]
    Shape(String),
    /// The namespace token is not in the canonical encoding.
    #[error("namespace token {0:?} is not canonically encoded")]
    Namespace(String),
    /// The address token is not in the canonical encoding.
    #[error("address token {0:?} is not canonically encoded")]
    Address(String),
}

fn keeps(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The namespace's token.
pub fn encode_namespace(namespace: &str) -> String {
    let mut token = String::with_capacity(namespace.len());
    for &byte in namespace.as_bytes() {
        if keeps(byte) {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "={byte:02X}");
        }
    }
    token
}

/// The namespace of a token made by [`encode_namespace`].
pub fn decode_namespace(token: &str) -> Result<String, KeyError> {
    let bad = || KeyError::Namespace(token.to_owned());
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'=' {
            let &[high, low, ..] = tail else { return Err(bad()) };
            let digit = |d: u8| match d {
                b'0'..=b'9' => Some(d - b'0'),
                b'A'..=b'F' => Some(d - b'A' + 10),
                _ => None,
            };
            let (Some(hi), Some(lo)) = (digit(high), digit(low)) else { return Err(bad()) };
            let decoded = hi << 4 | lo;
            // A byte that may stand for itself must: one key per namespace.
            if keeps(decoded) {
                return Err(bad());
            }
            bytes.push(decoded);
            rest = tail.get(2..).unwrap_or_default();
        } else if keeps(byte) {
            bytes.push(byte);
            rest = tail;
        } else {
            return Err(bad());
        }
    }
    if bytes.is_empty() {
        return Err(bad());
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address's token.
pub fn encode_address(address: SocketAddr) -> String {
    let mut token = match canonical(address.ip()) {
        IpAddr::V4(v4) => v4.octets().map(|o| o.to_string()).join("-"),
        IpAddr::V6(v6) => v6.segments().map(|s| format!("{s:x}")).join("-"),
    };
    let _ = write!(token, "_{}", address.port());
    token
}

/// The address of a token made by [`encode_address`].
pub fn decode_address(token: &str) -> Result<SocketAddr, KeyError> {
    let bad = || KeyError::Address(token.to_owned());
    let (ip, port) = token.rsplit_once('_').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let groups: Vec<&str> = ip.split('-').collect();
    let ip = match groups.len() {
        4 => {
            let mut octets = [0u8; 4];
            for (octet, group) in octets.iter_mut().zip(&groups) {
                *octet = group.parse().map_err(|_| bad())?;
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        8 => {
            let mut segments = [0u16; 8];
            for (segment, group) in segments.iter_mut().zip(&groups) {
                if group.is_empty() || group.len() > 4 || group.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(bad());
                }
                *segment = u16::from_str_radix(group, 16).map_err(|_| bad())?;
            }
            IpAddr::V6(Ipv6Addr::from(segments))
        }
        _ => return Err(bad()),
    };
    let address = SocketAddr::new(ip, port);
    // Leading zeros, a '+' sign, a mapped IPv4: not the one key of this address.
    if encode_address(address) != token {
        return Err(bad());
    }
    Ok(address)
}

/// The key of the entry `address` in `namespace`.
pub fn encode_key(namespace: &str, address: SocketAddr) -> String {
    format!("{}.{}", encode_namespace(namespace), encode_address(address))
}

/// The (namespace, address) of a key made by [`encode_key`].
pub fn decode_key(key: &str) -> Result<(String, SocketAddr), KeyError> {
    let (namespace, address) = key.split_once('.').ok_or_else(|| KeyError::Shape(key.to_owned()))?;
    if address.contains('.') {
        return Err(KeyError::Shape(key.to_owned()));
    }
    Ok((decode_namespace(namespace)?, decode_address(address)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// NATS's rule for KV keys: its alphabet, and `.` between non-empty tokens.
    fn is_nats_key(key: &str) -> bool {
        key.bytes().all(|b| keeps(b) || b == b'=' || b == b'/' || b == b'.')
            && key.split('.').all(|token| !token.is_empty())
    }

    #[test]
    fn examples() {
        let v6: SocketAddr = "[2001:db8::1]:27960".parse().unwrap();
        assert_eq!(encode_key("quake3", v6), "quake3.2001-db8-0-0-0-0-0-1_27960");
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1".parse().unwrap();
        assert_eq!(encode_address(mapped), "192-0-2-7_1");
        assert_eq!(encode_namespace("ünï.x"), "=C3=BCn=C3=AF=2Ex");
    }

    #[test]
    fn non_canonical_keys_are_refused() {
        for key in [
            "quake3",
            "quake3.192-0-2-7",
            "quake3.192-0-2-07_1",
            "quake3.192-0-2-7_01",
            "quake3.192-0-2-7_+1",
            "quake3.192-0-2-7_70000",
            "quake3.2001-DB8-0-0-0-0-0-1_1",
            "quake3.2001-db8--1_1",
            "quake3.0-0-0-0-0-ffff-c000-207_1",
            "q=61.1-2-3-4_5",
            "q=c3.1-2-3-4_5",
            "=C3.1-2-3-4_5",
            ".1-2-3-4_5",
            "q.1-2-3-4_5.x",
        ] {
            assert!(decode_key(key).is_err(), "{key} decoded");
        }
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            any::<([u16; 8], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_are_nats_keys(namespace in "\\PC{1,64}", address in address()) {
            let key = encode_key(&namespace, address);
            prop_assert!(is_nats_key(&key), "{key}");
            let canonical = SocketAddr::new(canonical(address.ip()), address.port());
            prop_assert_eq!(decode_key(&key), Ok((namespace, canonical)));
        }

        #[test]
        fn any_key_decodes_to_itself_or_not_at_all(key in "[-_=.a-zA-Z0-9]{1,40}") {
            if let Ok((namespace, address)) = decode_key(&key) {
                prop_assert_eq!(encode_key(&namespace, address), key);
            }
        }
    }
}
