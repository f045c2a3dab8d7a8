//! The async-std driver over real quinn connections on loopback, with an
//! embedded MetaServer: everything under `async_std::task::block_on`, in a
//! build where quinn is compiled without its tokio runtime.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use async_std::channel;
use async_std::future::timeout;
use bytes::Bytes;
use futures_util::StreamExt;
use metaserve_async_std::{
    browse, client_endpoint, meta_server, publish, server_endpoint, tls, Browse, BrowseOptions, BrowserEvent,
    ClientError, ErrorCode, MetaServerHandle, PublishOptions, RegistryConfig,
};

const WAIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

struct Fixture {
    addr: SocketAddr,
    server: MetaServerHandle,
    client: quinn::Endpoint,
    serving: async_std::task::JoinHandle<()>,
}

fn start() -> Fixture {
    let config = RegistryConfig { update_interval: Duration::from_millis(50), ..RegistryConfig::default() };
    let cert = tls::DevCertificate::generate().unwrap();
    let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), server_config).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = meta_server(config);
    let handle = server.handle();
    let serving = async_std::task::spawn(async move { server.serve(endpoint).await });
    let client_config = tls::client_config_pinned(cert.fingerprint).unwrap();
    let client = client_endpoint("127.0.0.1:0".parse().unwrap(), client_config).unwrap();
    Fixture { addr, server: handle, client, serving }
}

impl Fixture {
    async fn connect(&self) -> quinn::Connection {
        within("QUIC handshake", self.client.connect(self.addr, "localhost").unwrap()).await.unwrap()
    }
}

/// Reads `list` until a `Synced` at which `done` holds.
async fn until_synced(list: &mut Browse, what: &str, done: impl Fn(&Browse) -> bool) {
    within(what, async {
        while !(matches!(list.next().await.unwrap().unwrap(), BrowserEvent::Synced { .. }) && done(list)) {}
    })
    .await;
}

#[test]
fn publisher_appears_changes_and_leaves_with_goodbye() {
    async_std::task::block_on(async {
        let fx = start();
        let (tx, rx) = channel::bounded::<Bytes>(4);
        tx.send(Bytes::from_static(b"map=one")).await.unwrap();
        let conn = fx.connect().await;
        let publishing = async_std::task::spawn(async move { publish(&conn, PublishOptions::new("game"), rx).await });

        let conn = fx.connect().await;
        let mut list = within("browse Welcome", browse(&conn, BrowseOptions::new("game"))).await.unwrap();
        until_synced(&mut list, "the publisher listed", |l| l.servers().len() == 1).await;
        let address = list.servers().next().unwrap().address;

        tx.send(Bytes::from_static(b"map=two")).await.unwrap();
        until_synced(&mut list, "the update", |l| l.server(&address).is_some_and(|s| &s.blob[..] == b"map=two")).await;

        // The heartbeat stream ends: Goodbye, and the entry goes at once.
        drop(tx);
        within("publish to return", publishing).await.unwrap();
        until_synced(&mut list, "the removal", |l| l.servers().len() == 0).await;
        assert_eq!(fx.server.stats().publishers, 0);

        fx.server.shutdown();
        within("serve to return", fx.serving).await;
        match within("the browse to end", list.next()).await {
            Some(Err(ClientError::Rejected { code, .. })) => assert_eq!(code, ErrorCode::SHUTTING_DOWN),
            other => panic!("expected SHUTTING_DOWN, got {other:?}"),
        }
    });
}

#[test]
fn bad_token_is_rejected_with_its_code() {
    async_std::task::block_on(async {
        let fx = start();
        fx.server.set_publish_tokens("private", ["sesame"]);
        let conn = fx.connect().await;
        let heartbeats = futures_util::stream::iter([Bytes::from_static(b"x")]).chain(futures_util::stream::pending());
        match within("the rejection", publish(&conn, PublishOptions::new("private"), heartbeats)).await {
            Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHORIZED),
            other => panic!("expected UNAUTHORIZED, got {other:?}"),
        }
    });
}

#[test]
fn reconnect_helpers_come_back_after_a_restart_on_the_same_port() {
    use metaserve_async_std::{reconnect, Backoff, ReconnectEvent};

    async_std::task::block_on(async {
        let config = RegistryConfig { update_interval: Duration::from_millis(50), ..RegistryConfig::default() };
        let cert = tls::DevCertificate::generate().unwrap();
        let server_config = tls::server_config(vec![cert.cert.clone()], cert.key.clone_key(), &config).unwrap();
        let serve = |addr: SocketAddr| {
            let (server_config, config) = (server_config.clone(), config.clone());
            async move {
                // A restart may find the previous socket not yet released.
                let endpoint = within("binding", async {
                    loop {
                        match server_endpoint(addr, server_config.clone()) {
                            Ok(endpoint) => return endpoint,
                            Err(_) => async_std::task::sleep(Duration::from_millis(20)).await,
                        }
                    }
                })
                .await;
                let addr = endpoint.local_addr().unwrap();
                let server = meta_server(config);
                let handle = server.handle();
                (addr, handle, async_std::task::spawn(async move { server.serve(endpoint).await }))
            }
        };
        let (addr, handle, serving) = serve("127.0.0.1:0".parse().unwrap()).await;
        let client =
            || client_endpoint("127.0.0.1:0".parse().unwrap(), tls::client_config_pinned(cert.fingerprint).unwrap());
        let backoff =
            Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200), ..Backoff::default() };
        let meta = |endpoint| {
            reconnect(endpoint, addr, "localhost").with_backoff(backoff).with_connect_timeout(Duration::from_secs(1))
        };

        // A game that publishes once, and a browser.
        let publisher = meta(client().unwrap());
        let (tx, rx) = channel::bounded::<Bytes>(4);
        tx.send(Bytes::from_static(b"map=one")).await.unwrap();
        let publishing =
            async_std::task::spawn(async move { publisher.publish(PublishOptions::new("game"), rx).await });
        let mut list = meta(client().unwrap()).browse(BrowseOptions::new("game"));
        let listed = |list: &metaserve_async_std::ReconnectingBrowse| list.servers().any(|s| s.blob == "map=one");
        within("the publisher listed", async {
            while !(matches!(list.next().await, Some(Ok(ReconnectEvent::Browser(BrowserEvent::Synced { .. }))))
                && listed(&list))
            {}
        })
        .await;

        handle.shutdown();
        within("serve to return", serving).await;
        match within("the shutdown", list.next()).await {
            Some(Ok(ReconnectEvent::Retrying(retry))) => {
                assert!(matches!(retry.error, ClientError::Rejected { code: ErrorCode::SHUTTING_DOWN, .. }))
            }
            other => panic!("expected Retrying after the shutdown, got {other:?}"),
        }

        // Started again: the browser re-snapshots, and the game is listed
        // again without sending anything new.
        let (_, handle, serving) = serve(addr).await;
        within("the game listed again", async {
            let mut reset = false;
            loop {
                match list.next().await {
                    Some(Ok(ReconnectEvent::Browser(BrowserEvent::Reset))) => reset = true,
                    Some(Ok(ReconnectEvent::Browser(BrowserEvent::Synced { .. }))) if reset && listed(&list) => break,
                    Some(Ok(_)) => {}
                    other => panic!("the browse ended: {other:?}"),
                }
            }
        })
        .await;
        drop(tx);
        within("publish to return", publishing).await.unwrap();
        within("the browser's close", list.close()).await;
        handle.shutdown();
        within("serve to return", serving).await;
    });
}
