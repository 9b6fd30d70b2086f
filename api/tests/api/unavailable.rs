//! Postgres unreachable: a create that could not commit is a 503 with `Retry-After` and the
//! JSON error shape, not a 500; once Postgres is back, the same request with the same
//! `Idempotency-Key` is accepted. The API reaches Postgres through a TCP proxy this test
//! stops and starts (the shared server is never touched).

use std::time::Duration;

use paygate_gateways::GatewayRegistry;
use reqwest::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::helpers::{deposit_body, spawn_config, TestResult};

/// Forwards connections on `port` to Postgres until dropped; dropping closes them all.
struct Proxy {
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(listener: TcpListener) -> Self {
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { tasks }
    }

    async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_while_postgres_is_unreachable_is_503_with_retry_after() -> TestResult {
    let (mut config, pool) = paygate_testkit::isolated_config().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let proxy = Proxy::start(listener).await;
    let database = config
        .database
        .url
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .ok_or_else(|| anyhow::anyhow!("no database name"))?;
    config.database.url = format!("postgres://postgres@127.0.0.1:{port}/{database}");
    config.database.acquire_timeout = Duration::from_millis(1_000);
    config.api.bind = "127.0.0.1:0".into();
    let app = spawn_config(config, pool, GatewayRegistry::default()).await?;
    let merchant = app.merchant().await?;

    let ok = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("Idempotency-Key", "before")
        .send()
        .await?;
    assert_eq!(ok.status(), StatusCode::ACCEPTED, "through the proxy first");

    // Postgres goes away: pooled connections die, new ones are refused.
    proxy.stop().await;
    let response = app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("Idempotency-Key", "during-outage")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        matches!(retry_after, Some(s) if s >= 1),
        "Retry-After: {retry_after:?}"
    );
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(body["error"]["code"], "service_unavailable");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.contains("sqlx")));
    assert!(body["error"]["param"].is_null());

    // Back: the retry with the same key is accepted, and made exactly one transaction.
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let proxy = Proxy::start(listener).await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = app
            .post("/v1/deposits", &merchant.key, &deposit_body())
            .header("Idempotency-Key", "during-outage")
            .send()
            .await?
            .status();
        if status == StatusCode::ACCEPTED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(app.count("transactions").await?, 2);
    app.stop().await;
    proxy.stop().await;
    Ok(())
}
