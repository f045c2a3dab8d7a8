//! Admission of QUIC connection attempts, before any TLS work: how many
//! handshakes may be in progress, in total and per source address, and when
//! a client must first prove its address with a Retry.
//!
//! A connection attempt costs the server a TLS handshake (CPU) and about
//! 20 KiB of connection state until the handshake completes or times out.
//! Without bounds, valid Initial packets that are never continued pin that
//! state by the thousand. Each attempt is therefore decided as it arrives:
//!
//! 1. **Refused** (a stateless `CONNECTION_REFUSED`, no TLS) when
//!    [`ConnectionLimits::max_connecting`] handshakes are in progress, or
//!    [`ConnectionLimits::max_connecting_per_ip`] from its source address;
//! 2. **Retried** (a stateless Retry packet carrying an address-validation
//!    token) when more than [`ConnectionLimits::validate_above`] handshakes
//!    are in progress and the source has not proved its address yet: a
//!    flood from spoofed or fire-and-forget sources then costs no state;
//! 3. **Accepted** otherwise, holding its slot until the handshake completes,
//!    fails, or exceeds the handshake timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Bounds on QUIC handshakes in progress. Each has a default (see
/// [`ConnectionLimits::default`]) and applies to new attempts at once when
/// changed with `MetaServerHandle::set_connection_limits`.
///
/// ```
/// use metaserve_quinn::ConnectionLimits;
/// let limits = ConnectionLimits { max_connecting_per_ip: 8, ..ConnectionLimits::default() };
/// assert_eq!(limits.max_connecting, 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// QUIC handshakes in progress at once; further attempts are refused
    /// with `CONNECTION_REFUSED` before any TLS work. With about 20 KiB of
    /// state per handshake, the default 1,024 bounds them to about 20 MiB.
    pub max_connecting: usize,
    /// QUIC handshakes in progress from one IP address (IPv4-mapped IPv6
    /// counts as IPv4), so that one host cannot take every slot. Default 64,
    /// as many as the larger per-IP session limit.
    pub max_connecting_per_ip: usize,
    /// Above this many handshakes in progress, an attempt from an address
    /// that has not been validated gets a Retry first (one more round trip
    /// for the client, no state on the server). `0` validates every address;
    /// `usize::MAX` never asks. Default 64.
    pub validate_above: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits { max_connecting: 1024, max_connecting_per_ip: 64, validate_above: 64 }
    }
}

/// What to do with one connection attempt.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Go on with the handshake; the slot is held until it is dropped.
    Accept(Slot),
    /// Ask the client to prove its address first.
    Retry,
    /// Refuse: this many handshakes are in progress (in total, or from the
    /// source when `per_ip`).
    Refuse { per_ip: bool, max: usize },
}

/// Counts kept by the admission, since the server was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AdmissionCounts {
    pub(crate) in_progress: usize,
    pub(crate) refused: u64,
    pub(crate) retries: u64,
    pub(crate) timed_out: u64,
}

#[derive(Debug, Default)]
struct Tally {
    limits: ConnectionLimits,
    per_ip: HashMap<IpAddr, usize>,
    counts: AdmissionCounts,
}

/// The admission's shared state.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    tally: Arc<Mutex<Tally>>,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Tally> {
        // Every update below completes without panicking, so a poisoned
        // lock still holds consistent counts.
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides on an attempt from `ip` whose address is `validated` (it
    /// came back with a Retry token) or not.
    pub(crate) fn decide(&self, ip: IpAddr, validated: bool) -> Decision {
        let ip = ip.to_canonical();
        let mut tally = self.lock();
        let limits = tally.limits;
        let decision = if tally.counts.in_progress >= limits.max_connecting {
            Decision::Refuse { per_ip: false, max: limits.max_connecting }
        } else if tally.per_ip.get(&ip).is_some_and(|&n| n >= limits.max_connecting_per_ip) {
            Decision::Refuse { per_ip: true, max: limits.max_connecting_per_ip }
        } else if !validated && tally.counts.in_progress >= limits.validate_above {
            Decision::Retry
        } else {
            tally.counts.in_progress += 1;
            *tally.per_ip.entry(ip).or_default() += 1;
            return Decision::Accept(Slot { tally: self.tally.clone(), ip });
        };
        match decision {
            Decision::Retry => tally.counts.retries += 1,
            _ => tally.counts.refused += 1,
        }
        decision
    }

    /// A Retry could not be sent (quinn refused it): count it as refused.
    pub(crate) fn retry_failed(&self) {
        let mut tally = self.lock();
        tally.counts.retries -= 1;
        tally.counts.refused += 1;
    }

    pub(crate) fn limits(&self) -> ConnectionLimits {
        self.lock().limits
    }

    pub(crate) fn set_limits(&self, limits: ConnectionLimits) {
        self.lock().limits = limits;
    }

    pub(crate) fn counts(&self) -> AdmissionCounts {
        self.lock().counts
    }
}

/// One handshake's place in the admission; released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    tally: Arc<Mutex<Tally>>,
    ip: IpAddr,
}

impl Slot {
    /// The handshake exceeded its time: counted, and the slot released.
    pub(crate) fn timed_out(self) {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).counts.timed_out += 1;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.counts.in_progress -= 1;
        if let Some(n) = tally.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                tally.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!("test addresses parse"))
    }

    #[test]
    fn refuses_past_the_per_ip_and_total_bounds_and_releases_on_drop() {
        let admission = Admission::default();
        admission.set_limits(ConnectionLimits { max_connecting: 5, max_connecting_per_ip: 2, validate_above: 100 });
        let a: Vec<_> = (0..2).map(|_| admission.decide(ip("192.0.2.1"), false)).collect();
        assert!(a.iter().all(|d| matches!(d, Decision::Accept(_))));
        assert!(matches!(admission.decide(ip("::ffff:192.0.2.1"), true), Decision::Refuse { per_ip: true, max: 2 }));
        let b: Vec<_> = (0..3).map(|n| admission.decide(ip(&format!("192.0.2.{}", 10 + n)), false)).collect();
        assert!(b.iter().all(|d| matches!(d, Decision::Accept(_))));
        assert!(matches!(admission.decide(ip("198.51.100.1"), true), Decision::Refuse { per_ip: false, max: 5 }));
        assert_eq!(admission.counts().in_progress, 5);
        drop(a);
        drop(b);
        let counts = admission.counts();
        assert_eq!((counts.in_progress, counts.refused), (0, 2));
        assert!(admission.lock().per_ip.is_empty(), "no tally kept for finished handshakes");
    }

    #[test]
    fn asks_unvalidated_addresses_for_a_retry_under_load() {
        let admission = Admission::default();
        admission.set_limits(ConnectionLimits { max_connecting: 10, max_connecting_per_ip: 10, validate_above: 1 });
        let first = admission.decide(ip("192.0.2.1"), false);
        assert!(matches!(first, Decision::Accept(_)), "below the threshold: no Retry");
        assert!(matches!(admission.decide(ip("192.0.2.2"), false), Decision::Retry));
        assert!(matches!(admission.decide(ip("192.0.2.2"), true), Decision::Accept(_)), "validated: accepted");
        assert_eq!(admission.counts().retries, 1);
    }
}
