//! `spawn_app()`: the real API on port 0 against a fresh database, a unique Redis prefix and
//! unique Kafka topics (`paygate_core::testing::isolated_config`), driven over real HTTP.

use std::time::Duration;

use anyhow::Context;
use paygate_api::Application;
use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::domain::{ApiKeyId, MerchantId};
use paygate_gateways::GatewayRegistry;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub type TestResult = anyhow::Result<()>;

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub config: Config,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
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
    spawn_with(
        |config| {
            config.destinations.allow_loopback = true;
            config.destinations.allow_http = true;
        },
        GatewayRegistry::default(),
    )
    .await
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
    let (mut config, pool) = paygate_core::testing::isolated_config()
        .await
        .context("isolated config")?;
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
    let app = Application::build_with(config.clone(), registry)
        .await
        .context("build")?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(error) = app.run(token).await {
            eprintln!("app stopped with error: {error}");
        }
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    Ok(TestApp {
        address,
        pool,
        config,
        client,
        shutdown,
        task: Some(task),
    })
}

pub fn deposit_body() -> Value {
    json!({"amount": 1050, "currency": "USD", "customer": "cust_1"})
}

impl TestApp {
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

    /// Stops the app and waits for it to finish (relay round, producer flush).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
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

/// Reads every message on a topic from the beginning until `expected` arrived and then
/// `quiet` passed without another (so a duplicate would be seen), or `deadline` passed.
pub async fn consume_topic(
    config: &Config,
    topic: paygate_core::bus::Topic,
    expected: usize,
    deadline: Duration,
    quiet: Duration,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;

    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", paygate_core::testing::unique_name("apitest"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let name = paygate_core::bus::Topics::new(config.kafka.topic_prefix.clone()).name(topic);
    consumer.subscribe(&[&name])?;
    let mut messages = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        let wait = if messages.len() >= expected {
            quiet
        } else {
            end - now
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(message)) => {
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                messages.push((
                    key,
                    message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                ));
            }
            Ok(Err(error)) => anyhow::bail!("consume: {error}"),
            Err(_) => break,
        }
    }
    Ok(messages)
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
