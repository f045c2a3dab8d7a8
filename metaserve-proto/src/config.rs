//! Limits and settings of the meta server, with their defaults.

use std::time::Duration;

/// Settings of a [`Registry`](crate::Registry). Every limit has a default
/// (see [`RegistryConfig::default`]) and is enforced with a documented error
/// code when exceeded.
///
/// ```
/// use std::time::Duration;
/// use metaserve_proto::RegistryConfig;
///
/// let config = RegistryConfig {
///     max_publishers_per_ip: 4,
///     entry_ttl: Duration::from_secs(10),
///     ..RegistryConfig::default()
/// };
/// assert_eq!(config.max_blob_size, 8 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Largest heartbeat blob accepted (`BLOB_TOO_LARGE`). Default 8 KiB.
    pub max_blob_size: usize,
    /// Minimum interval between heartbeats a publisher is asked to keep.
    /// Faster heartbeats are coalesced: the newest wins. Default 1 s.
    pub heartbeat_interval: Duration,
    /// Browsers receive changes at most once per interval. Default 1 s.
    pub update_interval: Duration,
    /// An entry without a heartbeat for this long is removed and its
    /// connection closed (`HEARTBEAT_TIMEOUT`). Default 30 s.
    pub entry_ttl: Duration,
    /// A connection must send Hello within this time (`HANDSHAKE_TIMEOUT`). Default 10 s.
    pub handshake_timeout: Duration,
    /// Publishers from one IP address (`IP_LIMIT`). Default 16.
    pub max_publishers_per_ip: usize,
    /// Browsers from one IP address (`IP_LIMIT`). Default 64.
    pub max_browsers_per_ip: usize,
    /// Publishers in total (`SERVER_FULL`). Default 100,000.
    pub max_publishers: usize,
    /// Browsers in total (`SERVER_FULL`). Default 100,000.
    pub max_browsers: usize,
    /// Connections that have not yet sent Hello (`SERVER_FULL`). Default 10,000.
    pub max_handshakes: usize,
    /// Connections from one IP address that have not yet sent Hello
    /// (`IP_LIMIT`), so that one host cannot hold the pending-handshake
    /// table for everyone. Default 64: as many as the larger per-IP session
    /// limit, so an honest host connecting all its sessions at once fits.
    pub max_handshakes_per_ip: usize,
    /// Connections from one network (an IPv4 /24 or an IPv6 /48) that have
    /// not yet sent Hello (`IP_LIMIT`). Default 1,024: a tenth of
    /// `max_handshakes`, so one network (a CGNAT, a university) may connect
    /// many players at once while no network can hold the whole table.
    pub max_handshakes_per_network: usize,
    /// Namespaces with at least one publisher (`NAMESPACE_LIMIT`, refused
    /// to the publisher that would add one more). A namespace that only
    /// browsers ask for does not count: browsers cannot fill the table and
    /// lock games out. Each such namespace costs a browser session, so
    /// their number is bounded by [`RegistryConfig::max_browsers`].
    /// Default 1,024.
    pub max_namespaces: usize,
    /// Longest namespace name in bytes (`INVALID_NAMESPACE`). Default 64.
    pub max_namespace_len: usize,
    /// Tombstones kept per namespace for resuming browsers; a browser that
    /// falls further behind gets a Reset and a fresh snapshot. Default 10,000.
    pub max_tombstones: usize,
    /// Longest publish token in bytes (`UNAUTHORIZED`). Default 256.
    pub max_token_len: usize,
    /// `poll_transmit` stops adding frames once it has written this many
    /// bytes in one call. Default 16 KiB.
    pub transmit_chunk: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_blob_size: 8 * 1024,
            heartbeat_interval: Duration::from_secs(1),
            update_interval: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_publishers_per_ip: 16,
            max_browsers_per_ip: 64,
            max_publishers: 100_000,
            max_browsers: 100_000,
            max_handshakes: 10_000,
            max_handshakes_per_ip: 64,
            max_handshakes_per_network: 1_024,
            max_namespaces: 1_024,
            max_namespace_len: 64,
            max_tombstones: 10_000,
            max_token_len: 256,
            transmit_chunk: 16 * 1024,
        }
    }
}

impl RegistryConfig {
    /// The largest frame payload the registry accepts from a client: room
    /// for the largest blob or Hello. Larger frames get `FRAME_TOO_LARGE`.
    pub fn max_frame_size(&self) -> usize {
        self.max_blob_size.max(self.max_namespace_len + self.max_token_len) + 64
    }
}
