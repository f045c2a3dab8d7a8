//! [`Registry::check_invariants`]: the registry's internal consistency,
//! checked as a whole.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{network_of, Registry, State};

impl Registry {
    /// Checks the registry's internal consistency: counts, per-IP tallies,
    /// entry ownership, and each revision log's links, order and pins.
    /// Meant for tests and fuzz targets; O(size of the registry).
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut publishers, mut browsers, mut handshakes) = (0, 0, 0);
        let mut per_ip: HashMap<IpAddr, (usize, usize, usize)> = HashMap::new();
        let mut per_network: HashMap<IpAddr, usize> = HashMap::new();
        let mut per_ns: HashMap<usize, (usize, usize, u64)> = HashMap::new();
        for (idx, session) in &self.sessions {
            match &session.state {
                State::Handshaking => {
                    handshakes += 1;
                    per_ip.entry(session.peer.ip()).or_default().2 += 1;
                    *per_network.entry(network_of(session.peer.ip()).0).or_default() += 1;
                }
                State::Publisher(p) => {
                    publishers += 1;
                    per_ip.entry(session.peer.ip()).or_default().0 += 1;
                    per_ns.entry(p.ns).or_default().0 += 1;
                    let ns = self.namespaces.get(p.ns).ok_or("publisher in a missing namespace")?;
                    if ns.owners.get(&p.key) != Some(&idx) {
                        return Err(format!("publisher {idx} does not own its key {}", p.key));
                    }
                }
                State::Browser(b) => {
                    browsers += 1;
                    per_ip.entry(session.peer.ip()).or_default().1 += 1;
                    if !self.namespaces.contains(b.ns) {
                        return Err(format!("browser {idx} in a missing namespace"));
                    }
                    let counts = per_ns.entry(b.ns).or_default();
                    counts.1 += 1;
                    counts.2 += u64::from(b.cursor.is_pinned());
                    if b.cursor.rev > self.revision {
                        return Err(format!("browser {idx} cursor {} beyond revision {}", b.cursor.rev, self.revision));
                    }
                }
                State::Closing { .. } => {}
            }
        }
        let s = &self.stats;
        if (publishers, browsers, handshakes) != (s.publishers, s.browsers, s.handshakes) {
            return Err(format!(
                "session counts {:?} != recorded {:?}",
                (publishers, browsers, handshakes),
                (s.publishers, s.browsers, s.handshakes)
            ));
        }
        if per_ip.len() != self.per_ip.len() {
            return Err("per-IP table holds addresses without sessions".into());
        }
        for (ip, &(p, b, h)) in &per_ip {
            let c = self.per_ip.get(ip).ok_or("per-IP tally missing")?;
            if (c.publishers, c.browsers, c.handshakes) != (p, b, h) {
                return Err(format!("per-IP tally for {ip} wrong"));
            }
        }
        if per_network != self.handshakes_per_network {
            return Err("per-network handshake tally wrong".into());
        }
        let published = self.namespaces.iter().filter(|(_, ns)| ns.publishers > 0).count();
        if published != self.published_namespaces {
            return Err(format!("{published} namespaces with publishers, {} recorded", self.published_namespaces));
        }
        if self.namespace_ids.len() != self.namespaces.len() {
            return Err("namespace name table out of step".into());
        }
        for (idx, ns) in &self.namespaces {
            let (p, b, pins) = per_ns.get(&idx).copied().unwrap_or_default();
            if (p, b) != (ns.publishers, ns.browsers) || p + b == 0 {
                return Err(format!("namespace {} counts wrong or empty namespace kept", ns.name));
            }
            if self.namespace_ids.get(&ns.name) != Some(&idx) {
                return Err(format!("namespace {} not indexed", ns.name));
            }
            if ns.owners.len() != p {
                return Err(format!("namespace {}: {} owners for {p} publishers", ns.name, ns.owners.len()));
            }
            if ns.log.last_rev() > self.revision {
                return Err(format!("namespace {} ahead of the registry revision", ns.name));
            }
            ns.log.check(pins).map_err(|e| format!("namespace {}: {e}", ns.name))?;
            for (_, key, _, _) in ns.log.entries() {
                if !ns.owners.contains_key(&key) {
                    return Err(format!("namespace {}: entry {key} has no connected publisher", ns.name));
                }
            }
        }
        Ok(())
    }
}
