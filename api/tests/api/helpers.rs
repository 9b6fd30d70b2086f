//! `spawn_app()`: the real API on port 0 against a fresh database, a unique Redis prefix and
//! unique Kafka topics, driven over real HTTP. Start-up, isolation and the topic reader come
//! from `paygate-testkit`; this file keeps what is specific to the API's tests (merchants
//! with keys, request builders, the error shape).

use std::time::Duration;

use anyhow::Context;
use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, EventId, MerchantId, TransactionId, TransactionStatus};
use paygate_gateways::GatewayRegistry;
use paygate_testkit::Api;
use serde_json::{json, Value};
use sqlx::PgPool;

pub use paygate_testkit::kafka::consume_topic;

pub type TestResult = anyhow::Result<()>;

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub config: Config,
    pub client: reqwest::Client,
    app: Api,
}

pub struct TestMerchant {
    pub id: MerchantId,
    pub key_id: ApiKeyId,
    pub key: String,
}

pub async fn spawn_app() -> anyhow::Result<TestApp> {
    spawn_with(|_| {}, GatewayRegistry::default()).await
}

/// The app with the dispatcher's destination policy relaxed as in tests and `paygate dev`
/// (`allow_loopback`, `allow_http`), for tests that register loopback URLs.
pub async fn spawn_loopback_app() -> anyhow::Result<TestApp> {
    spawn_with(paygate_testkit::allow_loopback, GatewayRegistry::default()).await
}

/// The app with the production destination policy: public `https` only.
pub async fn spawn_strict_app() -> anyhow::Result<TestApp> {
    spawn_with(
        |config| {
            config.destinations.allow_loopback = false;
            config.destinations.allow_http = false;
        },
        GatewayRegistry::default(),
    )
    .await
}

pub async fn spawn_with(
    configure: impl FnOnce(&mut Config),
    registry: GatewayRegistry,
) -> anyhow::Result<TestApp> {
    let (mut config, pool) = paygate_testkit::isolated_config().await?;
    config.api.bind = "127.0.0.1:0".into();
    configure(&mut config);
    spawn_config(config, pool, registry).await
}

/// Starts the app on an explicit config (e.g. a second app on the first one's database).
pub async fn spawn_config(
    config: Config,
    pool: PgPool,
    registry: GatewayRegistry,
) -> anyhow::Result<TestApp> {
    let app = paygate_testkit::spawn_api(config.clone(), registry).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    Ok(TestApp {
        address: app.address.clone(),
        pool,
        config,
        client,
        app,
    })
}

pub fn deposit_body() -> Value {
    json!({"amount": 1050, "currency": "USD", "customer": "cust_1"})
}

impl TestApp {
    /// The API's keyring (`[secrets]`): webhook secrets are stored sealed with it.
    pub fn keyring(&self) -> anyhow::Result<paygate_core::keyring::Keyring> {
        paygate_testkit::keyring(&self.config)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn merchant(&self) -> anyhow::Result<TestMerchant> {
        let merchant = db::merchants::create(&self.pool, "Test Shop").await?;
        let (key_id, key) = db::merchants::create_api_key(&self.pool, merchant.id).await?;
        Ok(TestMerchant {
            id: merchant.id,
            key_id,
            key: key.expose().to_owned(),
        })
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(key).json(body)
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    /// Rows in a table (only this test's database).
    pub async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn unpublished(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Stops the app and waits for it to finish (relay round, producer flush). Dropping a
    /// `TestApp` stops it without waiting.
    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// Asserts the one error shape and returns `(type, code, param)`.
pub async fn error_of(
    response: reqwest::Response,
) -> anyhow::Result<(String, String, Option<String>)> {
    let body: Value = response.json().await.context("error body is JSON")?;
    let error = body.get("error").context("no `error` object")?;
    for field in ["type", "code", "message", "param"] {
        anyhow::ensure!(error.get(field).is_some(), "error lacks {field}: {body}");
    }
    Ok((
        error["type"].as_str().unwrap_or_default().to_owned(),
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["param"].as_str().map(str::to_owned),
    ))
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let held = paygate_testkit::wait::poll(Duration::from_millis(100), timeout, || {
        let check = check();
        async move { anyhow::Ok(check.await.then_some(())) }
    })
    .await;
    matches!(held, Ok(Some(())))
}

/// A deposit with a loopback `callback_url` (never delivered to: no dispatcher runs here)
/// and its `transaction.succeeded` event recorded as the dispatcher's handler records it.
/// The transaction, the event, and how many deliveries the recording scheduled.
pub async fn deposit_with_event(
    app: &TestApp,
    merchant: &TestMerchant,
) -> anyhow::Result<(TransactionId, EventId, usize)> {
    use paygate_core::db::webhooks::{self, EventType, NewEvent};
    let mut body = deposit_body();
    body["callback_url"] = json!("http://127.0.0.1:9/cb");
    let created: Value = app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?
        .json()
        .await?;
    let transaction = TransactionId::parse(created["id"].as_str().unwrap_or_default())?;
    let event = webhooks::event_id_for(transaction, TransactionStatus::Succeeded);
    let payload = json!({"type": "transaction.succeeded", "id": event.to_string(),
        "created_at": "2026-01-01T00:00:00Z", "data": created});
    let recorded = webhooks::record_event(
        &app.pool,
        &NewEvent {
            id: event,
            merchant_id: merchant.id,
            transaction_id: transaction,
            event_type: EventType::TransactionSucceeded,
            payload: payload.to_string(),
            callback_url: Some("http://127.0.0.1:9/cb".to_owned()),
        },
    )
    .await?;
    Ok((transaction, event, recorded.deliveries))
}
