//! Webhooks to one endpoint go over a kept-alive connection, and a name that resolves
//! elsewhere is never reached over a connection kept for its old address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::post;
use axum::Router;
use paygate_callback_dispatcher::clients::Clients;
use paygate_callback_dispatcher::sender::Sender;
use paygate_callback_dispatcher::signing::SignedHeaders;
use paygate_core::config::DestinationsConfig;
use paygate_core::destination::DestinationPolicy;

/// A merchant endpoint on loopback that records the client side of every connection a
/// request came on (one peer address per TCP connection).
async fn endpoint() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let app = Router::new().route(
        "/hook",
        post(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(peer);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("address: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    (address, peers)
}

fn sender() -> Sender {
    Sender {
        policy: DestinationPolicy::from_config(&DestinationsConfig {
            allow_loopback: true,
            allow_http: true,
            ..DestinationsConfig::default()
        }),
        clients: Clients::new(Duration::from_secs(5)),
    }
}

fn signed() -> SignedHeaders {
    SignedHeaders {
        id: "evt_1".into(),
        timestamp: "1".into(),
        signature: "v1,x".into(),
    }
}

fn connections(peers: &Mutex<Vec<SocketAddr>>) -> (usize, usize) {
    let peers = peers.lock().unwrap_or_else(|e| panic!("{e}"));
    let mut distinct = peers.clone();
    distinct.sort_unstable();
    distinct.dedup();
    (peers.len(), distinct.len())
}

#[tokio::test]
async fn webhooks_to_one_endpoint_share_a_kept_alive_connection() {
    let (address, peers) = endpoint().await;
    let sender = sender();
    // By name (pinned to the checked loopback address) and by IP literal.
    for url in [
        format!("http://localhost:{}/hook", address.port()),
        format!("http://{address}/hook"),
    ] {
        peers.lock().unwrap_or_else(|e| panic!("{e}")).clear();
        for _ in 0..5 {
            let report = sender.send(&url, &signed(), "{}").await;
            assert_eq!(report.status, Some(200), "{url}: {report:?}");
        }
        assert_eq!(
            connections(&peers),
            (5, 1),
            "{url}: five webhooks, one connection"
        );
    }
    assert_eq!(sender.clients.len(), 2, "one kept client per destination");
}

#[tokio::test]
async fn a_refused_destination_gets_no_client() {
    let sender = Sender {
        policy: DestinationPolicy::from_config(&DestinationsConfig::default()),
        ..sender()
    };
    let report = sender
        .send("http://127.0.0.1:9/hook", &signed(), "{}")
        .await;
    assert!(report.refused.is_some(), "{report:?}");
    assert!(sender.clients.is_empty());
}
