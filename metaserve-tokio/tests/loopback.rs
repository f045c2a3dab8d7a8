//! The tokio driver over real quinn connections on loopback, with an
//! embedded MetaServer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_tokio::{
    browse, client_endpoint, meta_server, publish, server_endpoint, tls, BrowseOptions, BrowserEvent, ClientError,
    ErrorCode, PublishOptions, RegistryConfig,
};
use tokio::time::timeout;

struct Fixture {
    addr: SocketAddr,
    server: metaserve_tokio::MetaServerHandle,
    client: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

async fn start(config: RegistryConfig) -> Fixture {
    let cert = tls::DevCertificate::generate().unwrap();
    let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), server_config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = meta_server(config);
    let handle = server.handle();
    let task = tokio::spawn(async move { server.serve(endpoint).await });
    let client_config = tls::client_config_pinned(cert.fingerprint).unwrap();
    let client = client_endpoint("127.0.0.1:0".parse().unwrap(), client_config).unwrap();
    Fixture { addr, server: handle, client, task }
}

impl Fixture {
    async fn connect(&self) -> quinn::Connection {
        self.client.connect(self.addr, "localhost").unwrap().await.unwrap()
    }
}

fn fast() -> RegistryConfig {
    RegistryConfig { update_interval: Duration::from_millis(50), ..RegistryConfig::default() }
}

#[tokio::test]
async fn publisher_appears_changes_and_leaves() {
    let fx = start(fast()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let publisher_conn = fx.connect().await;
    let publishing = tokio::spawn(async move {
        let heartbeats = tokio_stream(rx);
        publish(&publisher_conn, PublishOptions::new("game"), heartbeats).await
    });
    tx.send(Bytes::from_static(b"map=one")).await.unwrap();

    let browser_conn = fx.connect().await;
    let mut list = browse(&browser_conn, BrowseOptions::new("game")).await.unwrap();
    let seen = timeout(Duration::from_secs(10), async {
        loop {
            match list.next().await.unwrap().unwrap() {
                BrowserEvent::Synced { .. } if list.servers().len() == 1 => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "browser never saw the publisher");
    let entry = list.servers().next().unwrap().clone();
    assert_eq!(&entry.blob[..], b"map=one");

    tx.send(Bytes::from_static(b"map=two")).await.unwrap();
    timeout(Duration::from_secs(10), async {
        loop {
            if let BrowserEvent::Upsert(s) = list.next().await.unwrap().unwrap() {
                if &s.blob[..] == b"map=two" {
                    break;
                }
            }
        }
    })
    .await
    .expect("update not delivered");

    drop(tx); // the heartbeat stream ends: Goodbye
    timeout(Duration::from_secs(10), publishing).await.unwrap().unwrap().unwrap();
    timeout(Duration::from_secs(10), async {
        loop {
            if let BrowserEvent::Remove(addr) = list.next().await.unwrap().unwrap() {
                assert_eq!(addr, entry.address);
                break;
            }
        }
    })
    .await
    .expect("removal not delivered");
    assert_eq!(fx.server.stats().publishers, 0);

    fx.server.shutdown();
    let end = timeout(Duration::from_secs(10), async {
        loop {
            match list.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    match end {
        Some(Err(ClientError::Rejected { code, .. })) => assert_eq!(code, ErrorCode::SHUTTING_DOWN),
        other => panic!("expected SHUTTING_DOWN, got {other:?}"),
    }
    timeout(Duration::from_secs(10), fx.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_token_is_rejected_with_its_code() {
    let fx = start(fast()).await;
    fx.server.set_publish_tokens("private", ["sesame"]);
    let conn = fx.connect().await;
    let heartbeats = futures_util::stream::iter([Bytes::from_static(b"x")]).chain(futures_util::stream::pending());
    let result = timeout(Duration::from_secs(10), publish(&conn, PublishOptions::new("private"), heartbeats)).await;
    match result.unwrap() {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHORIZED),
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }
}

fn tokio_stream(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> impl futures_core::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn trust_by_ca_file_and_refusal_of_a_wrong_fingerprint() {
    let config = fast();
    let cert = tls::DevCertificate::generate().unwrap();
    let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), server_config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = meta_server(config);
    let handle = server.handle();
    let task = tokio::spawn(async move { server.serve(endpoint).await });

    // The development certificate as a trust anchor, from a PEM file.
    let pem = std::env::temp_dir().join(format!("metaserve-ca-{}.pem", std::process::id()));
    std::fs::write(&pem, &cert.cert_pem).unwrap();
    let trusted = client_endpoint("127.0.0.1:0".parse().unwrap(), tls::client_config_with_ca(&pem).unwrap()).unwrap();
    let conn = trusted.connect(addr, "localhost").unwrap().await.unwrap();
    let list = browse(&conn, BrowseOptions::new("game")).await.unwrap();
    assert_eq!(list.welcome().map(|w| w.version), Some(1));

    // Pinning another certificate's fingerprint refuses the handshake.
    let other = tls::DevCertificate::generate().unwrap();
    let pinned = tls::client_config_pinned(other.fingerprint).unwrap();
    let wrong = client_endpoint("127.0.0.1:0".parse().unwrap(), pinned).unwrap();
    let refused = wrong.connect(addr, "localhost").unwrap().await;
    assert!(refused.is_err(), "a wrong fingerprint must not connect");

    // A PEM file without a certificate is a clear error naming the file.
    std::fs::write(&pem, "not a certificate").unwrap();
    let err = tls::client_config_with_ca(&pem).unwrap_err().to_string();
    assert!(err.contains(pem.to_str().unwrap()), "{err}");
    std::fs::remove_file(&pem).unwrap();

    handle.shutdown();
    timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}
