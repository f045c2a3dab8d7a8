//! Admission: what a new connection ([`Registry::accept`]) and its Hello
//! must pass before a session is established (`docs/PROTOCOL.md` §6.1).
//!
//! Checks 1 (the version) and 2 (the rest of the Hello decodes) of §6.1
//! happen while the frame is decoded (`frame.rs`), so the registry only sees
//! Hellos that passed them; each check here names the one it implements.
//! They only read the registry: the first to fail gives the error that
//! ends the session, and nothing has changed.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::error::Error;
use crate::frame::{Hello, Role};

use super::{Namespace, Registry};

/// Prefix lengths of the networks that per-network limits count in: an
/// IPv4 /24 and an IPv6 /48 are what one operator typically holds.
const NETWORK_PREFIX_V4: u8 = 24;
const NETWORK_PREFIX_V6: u8 = 48;

/// The network `ip` (canonical) is counted in, and its prefix length.
pub(super) fn network_of(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => (IpAddr::V4((u32::from(v4) & !0xff).into()), NETWORK_PREFIX_V4),
        IpAddr::V6(v6) => (IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()), NETWORK_PREFIX_V6),
    }
}

/// The address a publisher's entry is keyed by (§7.1): its IP with the
/// declared port, or else the port it connects from.
pub(super) fn entry_key(peer: SocketAddr, hello: &Hello<'_>) -> SocketAddr {
    SocketAddr::new(peer.ip(), hello.declared_port.unwrap_or(peer.port()))
}

/// §6.1 check 3: the namespace is not empty, at most `max_len` bytes, and
/// has no control character (`INVALID_NAMESPACE`).
fn check_namespace(name: &str, max_len: usize) -> Result<(), Error> {
    if name.is_empty() {
        Err(Error::InvalidNamespace("empty"))
    } else if name.len() > max_len {
        Err(Error::InvalidNamespace("too long"))
    } else if name.chars().any(char::is_control) {
        Err(Error::InvalidNamespace("contains control characters"))
    } else {
        Ok(())
    }
}

fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    // Constant time in the token's content, so a guesser learns nothing from timing.
    expected.len() == given.len() && expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl Registry {
    /// Admits a new connection from `peer`, before its Hello: the registry
    /// is not shutting down (`SHUTTING_DOWN`), no ban covers `peer`
    /// (`BANNED`), and the handshake limits leave room (§6.1, the paragraph
    /// on admitting the connection itself; see [`Registry::check_handshakes`]).
    pub(super) fn admit_connection(&self, now: Instant, peer: SocketAddr) -> Result<(), Error> {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        }
        self.check_ban(now, peer)?;
        self.check_handshakes(peer.ip().to_canonical())
    }

    /// Admits `hello` from the handshaking connection at `peer`: §6.1
    /// checks 3 to 9, in the table's order (a browser has only 3, 8 and 9).
    pub(super) fn admit_hello(&self, now: Instant, peer: SocketAddr, hello: &Hello<'_>) -> Result<(), Error> {
        check_namespace(hello.namespace, self.config.max_namespace_len)?;
        match hello.role {
            Role::Publisher => {
                self.check_token(hello.namespace, hello.token)?;
                let key = entry_key(peer, hello);
                self.check_ban(now, key)?;
                let ns = self.namespace_named(hello.namespace);
                self.check_namespace_limit(ns)?;
                // Taking over an entry (same IP, same port) closes its old
                // connection, so it adds no publisher: the limits do not apply.
                if !ns.is_some_and(|ns| ns.owners.contains_key(&key)) {
                    self.check_ip_limit(Role::Publisher, peer.ip())?;
                    self.check_server_limit(Role::Publisher)?;
                }
            }
            Role::Browser => {
                self.check_ip_limit(Role::Browser, peer.ip())?;
                self.check_server_limit(Role::Browser)?;
            }
        }
        Ok(())
    }

    /// No ban in force at `now` covers `addr` (`BANNED`): the peer of a new
    /// connection, or (§6.1 check 6) the entry address a publisher's Hello
    /// asks for.
    fn check_ban(&self, now: Instant, addr: SocketAddr) -> Result<(), Error> {
        match self.bans.lookup(now, addr) {
            Some(ban) => Err(Error::Banned { reason: ban.reason.clone() }),
            None => Ok(()),
        }
    }

    /// §6.1, admitting a connection before its Hello: fewer than
    /// `max_handshakes` connections wait for their Hello (`SERVER_FULL`),
    /// fewer than `max_handshakes_per_ip` of them from `ip` and
    /// `max_handshakes_per_network` from its network (`IP_LIMIT`).
    fn check_handshakes(&self, ip: IpAddr) -> Result<(), Error> {
        if self.stats.handshakes >= self.config.max_handshakes {
            return Err(Error::ServerFull { what: "pending handshakes", max: self.config.max_handshakes });
        }
        let max = self.config.max_handshakes_per_ip;
        if self.per_ip.get(&ip).is_some_and(|c| c.handshakes >= max) {
            return Err(Error::HandshakeLimit { from: ip, prefix_len: None, max });
        }
        let (network, prefix_len) = network_of(ip);
        let max = self.config.max_handshakes_per_network;
        if self.handshakes_per_network.get(&network).is_some_and(|&n| n >= max) {
            return Err(Error::HandshakeLimit { from: network, prefix_len: Some(prefix_len), max });
        }
        Ok(())
    }

    /// §6.1 checks 4 and 5, publishers only: the token is at most
    /// `max_token_len` bytes, and one of the namespace's publish tokens if
    /// it has any (`UNAUTHORIZED`).
    fn check_token(&self, namespace: &str, token: &[u8]) -> Result<(), Error> {
        if token.len() > self.config.max_token_len {
            return Err(Error::Unauthorized);
        }
        match self.tokens.get(namespace) {
            Some(tokens) if !tokens.iter().any(|t| token_matches(t, token)) => Err(Error::Unauthorized),
            _ => Ok(()),
        }
    }

    /// §6.1 check 7, publishers only: the namespace `ns` (`None`: it does not
    /// exist yet) already has a publisher, or fewer than `max_namespaces`
    /// namespaces have one (`NAMESPACE_LIMIT`).
    fn check_namespace_limit(&self, ns: Option<&Namespace>) -> Result<(), Error> {
        if ns.is_none_or(|ns| ns.publishers == 0) && self.published_namespaces >= self.config.max_namespaces {
            return Err(Error::NamespaceLimit { max: self.config.max_namespaces });
        }
        Ok(())
    }

    /// §6.1 check 8: fewer than the per-IP limit of `role`'s sessions come
    /// from `ip` (`IP_LIMIT`). Not checked for a publisher's takeover.
    fn check_ip_limit(&self, role: Role, ip: IpAddr) -> Result<(), Error> {
        let max = match role {
            Role::Publisher => self.config.max_publishers_per_ip,
            Role::Browser => self.config.max_browsers_per_ip,
        };
        let count = self.per_ip.get(&ip).map(|c| match role {
            Role::Publisher => c.publishers,
            Role::Browser => c.browsers,
        });
        if count.is_some_and(|n| n >= max) {
            return Err(Error::IpLimit { role, ip, max });
        }
        Ok(())
    }

    /// §6.1 check 9: fewer than the server-wide limit of `role`'s sessions
    /// are established (`SERVER_FULL`). Not checked for a publisher's takeover.
    fn check_server_limit(&self, role: Role) -> Result<(), Error> {
        let (count, max, what) = match role {
            Role::Publisher => (self.stats.publishers, self.config.max_publishers, "publishers"),
            Role::Browser => (self.stats.browsers, self.config.max_browsers, "browsers"),
        };
        if count >= max {
            return Err(Error::ServerFull { what, max });
        }
        Ok(())
    }
}
