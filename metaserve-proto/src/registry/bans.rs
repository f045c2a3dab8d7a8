//! Operator bans: addresses, networks and single ports refused with
//! `BANNED`, and the registry's index of them.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Instant;

/// What a [`Ban`] covers.
///
/// Parsed from the forms an operator writes: an IP address (`192.0.2.7`,
/// `2001:db8::7`), a network in CIDR notation (`192.0.2.0/24`,
/// `2001:db8::/32`; host bits are cleared), or an address with a port
/// (`192.0.2.7:27960`, `[2001:db8::7]:27960`). IPv4-mapped IPv6 addresses
/// are treated as the IPv4 address they map.
///
/// ```
/// use metaserve_proto::BanTarget;
/// let net: BanTarget = "192.0.2.77/24".parse().unwrap();
/// assert_eq!(net.to_string(), "192.0.2.0/24");
/// assert!(net.matches("192.0.2.1:4000".parse().unwrap()));
/// assert!(!net.matches("192.0.3.1:4000".parse().unwrap()));
/// let one: BanTarget = "[::ffff:192.0.2.7]:27960".parse().unwrap();
/// assert!(one.matches("192.0.2.7:27960".parse().unwrap()));
/// assert!(!one.matches("192.0.2.7:27961".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// Every port of one IP address.
    Ip(IpAddr),
    /// Every address of a network: `addr` with its host bits cleared.
    Network {
        /// The network address.
        addr: IpAddr,
        /// Leading bits that must match: at most 32 for IPv4, 128 for IPv6.
        prefix_len: u8,
    },
    /// One IP address and port.
    Address(SocketAddr),
}

/// Why a [`BanTarget`] did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ban target {text:?}: {what} (expected an IP address, a CIDR network like 192.0.2.0/24, or IP:port)")]
pub struct BanTargetError {
    text: String,
    what: &'static str,
}

fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with all but its first `len` bits cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

impl BanTarget {
    /// Whether a connection from (or an entry at) `addr` is covered.
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        match *self {
            BanTarget::Ip(banned) => canonical(banned) == ip,
            BanTarget::Network { addr: net, prefix_len } => {
                let net = canonical(net);
                net.is_ipv4() == ip.is_ipv4() && mask(ip, prefix_len) == mask(net, prefix_len)
            }
            BanTarget::Address(banned) => canonical(banned.ip()) == ip && banned.port() == addr.port(),
        }
    }

    /// The same target with IPv4-mapped addresses unmapped and host bits cleared.
    fn normalized(self) -> BanTarget {
        match self {
            BanTarget::Ip(ip) => BanTarget::Ip(canonical(ip)),
            BanTarget::Network { addr, prefix_len } => {
                let mapped = matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
                let addr_c = canonical(addr);
                // A mapped network (::ffff:192.0.2.0/120) becomes its IPv4 form (/24).
                let len = if mapped { prefix_len.saturating_sub(96) } else { prefix_len };
                let len = len.min(max_prefix(addr_c));
                if len == max_prefix(addr_c) {
                    BanTarget::Ip(addr_c)
                } else {
                    BanTarget::Network { addr: mask(addr_c, len), prefix_len: len }
                }
            }
            BanTarget::Address(a) => BanTarget::Address(SocketAddr::new(canonical(a.ip()), a.port())),
        }
    }
}

impl FromStr for BanTarget {
    type Err = BanTargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |what| BanTargetError { text: text.to_owned(), what };
        let s = text.trim();
        if let Some((addr, len)) = s.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| err("the network address is not an IP address"))?;
            let prefix_len: u8 = len.parse().map_err(|_| err("the prefix length is not a number"))?;
            if prefix_len > max_prefix(addr) {
                return Err(err("the prefix length is too long for the address family"));
            }
            return Ok(BanTarget::Network { addr, prefix_len }.normalized());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(BanTarget::Ip(ip).normalized());
        }
        match s.parse::<SocketAddr>() {
            Ok(addr) => Ok(BanTarget::Address(addr).normalized()),
            Err(_) => Err(err("not an IP address, network or address with port")),
        }
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Ip(ip) => write!(f, "{ip}"),
            BanTarget::Network { addr, prefix_len } => write!(f, "{addr}/{prefix_len}"),
            BanTarget::Address(addr) => write!(f, "{addr}"),
        }
    }
}

/// One entry of the operator's ban list: see
/// [`Registry::set_bans`](crate::Registry::set_bans).
///
/// ```
/// use std::time::{Duration, Instant};
/// use metaserve_proto::Ban;
/// let now = Instant::now();
/// let ban = Ban::new("198.51.100.0/24".parse().unwrap(), "fake servers")
///     .expires_at(now + Duration::from_secs(3600));
/// assert!(ban.is_active(now));
/// assert!(!ban.is_active(now + Duration::from_secs(3600)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ban {
    /// What is banned.
    pub target: BanTarget,
    /// Told to the banned client in the close reason (`banned: <reason>`).
    pub reason: String,
    /// When the ban lapses; `None` for never.
    pub expires: Option<Instant>,
}

impl Ban {
    /// A ban of `target` for `reason`, without expiry.
    pub fn new(target: BanTarget, reason: impl Into<String>) -> Ban {
        Ban { target: target.normalized(), reason: reason.into(), expires: None }
    }

    /// The same ban, lapsing at `at`.
    pub fn expires_at(mut self, at: Instant) -> Ban {
        self.expires = Some(at);
        self
    }

    /// Whether the ban is in force at `now`: it has not expired.
    pub fn is_active(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| now < at)
    }
}

/// The ban list, indexed so a lookup costs one hash probe per distinct
/// prefix length in the list, not one comparison per ban.
#[derive(Debug, Default)]
pub(crate) struct BanList {
    bans: Vec<Ban>,
    /// (network address, prefix length) → bans; single IPs have the full length.
    networks: HashMap<(IpAddr, u8), Vec<usize>>,
    prefix_lens: BTreeSet<u8>,
    addresses: HashMap<SocketAddr, Vec<usize>>,
}

impl BanList {
    pub(crate) fn new(bans: Vec<Ban>) -> BanList {
        let mut list = BanList::default();
        for (i, ban) in bans.iter().enumerate() {
            match ban.target.normalized() {
                BanTarget::Ip(ip) => {
                    list.networks.entry((ip, max_prefix(ip))).or_default().push(i);
                    list.prefix_lens.insert(max_prefix(ip));
                }
                BanTarget::Network { addr, prefix_len } => {
                    list.networks.entry((addr, prefix_len)).or_default().push(i);
                    list.prefix_lens.insert(prefix_len);
                }
                BanTarget::Address(addr) => list.addresses.entry(addr).or_default().push(i),
            }
        }
        list.bans = bans;
        list
    }

    pub(crate) fn bans(&self) -> &[Ban] {
        &self.bans
    }

    fn first_active(&self, indices: Option<&Vec<usize>>, now: Instant) -> Option<&Ban> {
        indices?.iter().filter_map(|&i| self.bans.get(i)).find(|b| b.is_active(now))
    }

    /// The first ban in force at `now` that covers `addr`.
    pub(crate) fn lookup(&self, now: Instant, addr: SocketAddr) -> Option<&Ban> {
        if self.bans.is_empty() {
            return None;
        }
        let ip = canonical(addr.ip());
        let addr = SocketAddr::new(ip, addr.port());
        if let Some(ban) = self.first_active(self.addresses.get(&addr), now) {
            return Some(ban);
        }
        let max = max_prefix(ip);
        self.prefix_lens
            .iter()
            .filter(|&&len| len <= max)
            .find_map(|&len| self.first_active(self.networks.get(&(mask(ip, len), len)), now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form_and_rejects_nonsense() {
        assert_eq!("192.0.2.7".parse::<BanTarget>().unwrap(), BanTarget::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!("192.0.2.7/32".parse::<BanTarget>().unwrap(), BanTarget::Ip("192.0.2.7".parse().unwrap()));
        assert_eq!("::ffff:192.0.2.0/120".parse::<BanTarget>().unwrap().to_string(), "192.0.2.0/24");
        assert_eq!("2001:db8::1/32".parse::<BanTarget>().unwrap().to_string(), "2001:db8::/32");
        assert_eq!("0.0.0.0/0".parse::<BanTarget>().unwrap().to_string(), "0.0.0.0/0");
        assert_eq!("[2001:db8::1]:80".parse::<BanTarget>().unwrap(), BanTarget::Address(sa("[2001:db8::1]:80")));
        for bad in ["", "host.example", "192.0.2.0/33", "2001:db8::/129", "192.0.2.1:99999", "1.2.3.4/x", "1.2.3/8"] {
            let err = bad.parse::<BanTarget>().unwrap_err();
            assert!(err.to_string().contains("invalid ban target"), "{bad}: {err}");
        }
    }

    #[test]
    fn lookup_matches_ips_networks_and_ports_while_active() {
        let now = Instant::now();
        let list = BanList::new(vec![
            Ban::new("192.0.2.7".parse().unwrap(), "one ip"),
            Ban::new("198.51.100.0/24".parse().unwrap(), "a network").expires_at(now + Duration::from_secs(10)),
            Ban::new("203.0.113.5:27960".parse().unwrap(), "one port"),
            Ban::new("2001:db8::/32".parse().unwrap(), "v6 net"),
            Ban::new("0.0.0.0/0".parse().unwrap(), "expired everything").expires_at(now),
        ]);
        let reason = |addr: &str, at: Instant| list.lookup(at, sa(addr)).map(|b| b.reason.as_str());
        assert_eq!(reason("192.0.2.7:1", now), Some("one ip"));
        assert_eq!(reason("[::ffff:192.0.2.7]:1", now), Some("one ip"));
        assert_eq!(reason("192.0.2.8:1", now), None);
        assert_eq!(reason("198.51.100.200:5", now), Some("a network"));
        assert_eq!(reason("198.51.100.200:5", now + Duration::from_secs(10)), None);
        assert_eq!(reason("203.0.113.5:27960", now), Some("one port"));
        assert_eq!(reason("203.0.113.5:27961", now), None);
        assert_eq!(reason("[2001:db8:ffff::1]:9", now), Some("v6 net"));
        assert_eq!(reason("[2001:db9::1]:9", now), None);
        assert_eq!(reason("[::1]:9", now), None);
    }
}
