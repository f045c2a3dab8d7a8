//! The parts of `metaserve-daemon` that other programs share with it: the
//! lines it prints on stdout at start, which launchers, load generators and
//! tests read to learn where it listens and which certificate it serves.
//!
//! ```
//! use metaserve_daemon::announce::Announcement;
//!
//! let mut announcement = Announcement::default();
//! let stdout = "metaserve listening on 127.0.0.1:27950\n\
//!               development certificate written to metaserve-dev-cert.pem\n\
//!               SHA-256 fingerprint: 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:\
//!               00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\n";
//! let done = stdout.lines().find_map(|line| announcement.read_line(line));
//! let (listen, _fingerprint) = done.expect("address and fingerprint announced");
//! assert_eq!(listen.port(), 27950);
//! assert_eq!(announcement.http, None);
//! ```

#![forbid(unsafe_code)]

pub mod announce;
