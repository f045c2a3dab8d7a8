//! Several metaserve daemons serving one list over NATS JetStream.
//!
//! Every entry of every namespace is one key of a JetStream KV bucket; its
//! value is the entry record. This crate holds the two encodings, specified
//! byte for byte in `docs/CLUSTER.md`:
//!
//! - [`key`]: an entry's (namespace, address) as a NATS KV key, reversibly;
//! - [`record`]: the entry record (blob, flags, owning node, first-seen time).
//!
//! The replication driver (the registry's replication interface moved to and
//! from NATS with `async-nats`) is being built on these (issue 13).
//!
//! ```
//! use metaserve_cluster::key::{decode_key, encode_key};
//!
//! let address = "192.0.2.7:27960".parse().unwrap();
//! let key = encode_key("my game", address);
//! assert_eq!(key, "my=20game.192-0-2-7_27960");
//! assert_eq!(decode_key(&key).unwrap(), ("my game".to_owned(), address));
//! ```

#![forbid(unsafe_code)]

pub mod key;
pub mod record;
