//! The start-up lines on stdout: printed by the daemon, parsed here by
//! everyone who starts one, so that the two cannot drift apart.

use std::net::SocketAddr;

use metaserve_tokio::tls::Fingerprint;

/// Precedes the bound QUIC address: `metaserve listening on 127.0.0.1:27950`.
pub const LISTENING: &str = "metaserve listening on ";
/// Precedes the bound HTTP address, printed before the fingerprint when
/// `--http` is given: `metaserve http on 127.0.0.1:8080`.
pub const HTTP: &str = "metaserve http on ";
/// Precedes the development certificate's fingerprint (`--dev` only).
pub const FINGERPRINT: &str = "SHA-256 fingerprint: ";

/// What the daemon has announced so far, fed one stdout line at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    /// The QUIC address it listens on.
    pub listen: Option<SocketAddr>,
    /// The HTTP API's address, if `--http` was given.
    pub http: Option<SocketAddr>,
    /// The development certificate's fingerprint.
    pub fingerprint: Option<Fingerprint>,
}

impl Announcement {
    /// Takes one line of the daemon's stdout. Returns the address and the
    /// fingerprint once both have been announced (the HTTP address, if any,
    /// comes before the fingerprint); other lines are ignored.
    pub fn read_line(&mut self, line: &str) -> Option<(SocketAddr, Fingerprint)> {
        if let Some(rest) = line.strip_prefix(LISTENING) {
            self.listen = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix(HTTP) {
            self.http = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix(FINGERPRINT) {
            self.fingerprint = rest.trim().parse().ok();
        }
        self.listen.zip(self.fingerprint)
    }
}
