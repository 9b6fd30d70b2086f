//! Admission control: while the workers' messages wait past `api.shed_after_wait_ms` for a
//! second, new deposits and withdrawals are refused with 503 `overloaded` and a
//! `Retry-After`, nothing written; reads go on; once the wait is back under the bound the
//! same request (same `Idempotency-Key`) is accepted. One straggler past the bound (a
//! message that waited out a consumer group's join) refuses nothing. The waits are published
//! to the real Redis as a worker publishes them, every 200 ms here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use paygate_core::pipeline_wait::{self, WaitReport};
use paygate_gateways::GatewayRegistry;
use redis::aio::ConnectionManager;
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{deposit_body, error_of, spawn_with, TestApp, TestMerchant, TestResult};

/// A worker's publisher: its current wait, published every 200 ms until dropped.
struct Worker {
    wait_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Worker {
    async fn start(app: &TestApp, instance: &'static str, wait_ms: u64) -> anyhow::Result<Self> {
        let client = redis::Client::open(app.config.redis.url.as_str())?;
        let mut redis = ConnectionManager::new(client).await?;
        let prefix = app.config.redis.key_prefix.clone();
        let worker = Self {
            wait_ms: Arc::new(AtomicU64::new(wait_ms)),
            stop: CancellationToken::new(),
        };
        let (current, stop) = (worker.wait_ms.clone(), worker.stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let report = WaitReport {
                    wait_ms: current.load(Ordering::SeqCst),
                    at: Utc::now(),
                };
                let group = "pgt.payment-processor";
                let _ = pipeline_wait::publish(&mut redis, &prefix, group, instance, report).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(worker)
    }

    fn set(&self, wait_ms: u64) {
        self.wait_ms.store(wait_ms, Ordering::SeqCst);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn deposit(
    app: &TestApp,
    merchant: &TestMerchant,
    key: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .post("/v1/deposits", &merchant.key, &deposit_body())
        .header("Idempotency-Key", key)
        .send()
        .await?)
}

/// The status a create gets now, probed with an invalid amount: admitted, it is a 400 that
/// writes nothing; refused, a 503.
async fn probe(app: &TestApp, merchant: &TestMerchant) -> anyhow::Result<StatusCode> {
    let body = json!({"amount": -1, "currency": "USD", "customer": "probe"});
    Ok(app
        .post("/v1/deposits", &merchant.key, &body)
        .send()
        .await?
        .status())
}

/// Waits (up to 6 s; the API reads the waits every 250 ms and refuses after a second past
/// the bound) until creates are refused (`shedding`) or admitted again.
async fn until_shedding(app: &TestApp, merchant: &TestMerchant, shedding: bool) -> TestResult {
    let want = match shedding {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::BAD_REQUEST,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let status = probe(app, merchant).await?;
        if status == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "creates still answered {status}, not {want}, after 6 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_are_refused_while_the_pipeline_waits_past_the_bound_and_nothing_is_written(
) -> TestResult {
    let app = spawn_with(
        |config| config.api.shed_after_wait = Duration::from_secs(2),
        GatewayRegistry::default(),
    )
    .await?;
    let merchant = app.merchant().await?;

    // Under the bound, and a stopped worker's report past it (too old to count): admitted.
    let worker = Worker::start(&app, "busy", 1_500).await?;
    let client = redis::Client::open(app.config.redis.url.as_str())?;
    let mut redis = ConnectionManager::new(client).await?;
    let stale = WaitReport {
        wait_ms: 60_000,
        at: Utc::now() - chrono::Duration::seconds(10),
    };
    let prefix = &app.config.redis.key_prefix;
    pipeline_wait::publish(&mut redis, prefix, "pgt.callback-processor", "dead", stale).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    until_shedding(&app, &merchant, false).await?;
    assert_eq!(
        deposit(&app, &merchant, "under").await?.status(),
        StatusCode::ACCEPTED
    );

    // One straggler: past the bound for a single report, then back under. Nothing refused.
    worker.set(9_000);
    tokio::time::sleep(Duration::from_millis(150)).await;
    worker.set(100);
    for _ in 0..15 {
        assert_eq!(probe(&app, &merchant).await?, StatusCode::BAD_REQUEST);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past it and staying there: a create is refused, says how long to wait, writes nothing.
    worker.set(6_000);
    until_shedding(&app, &merchant, true).await?;
    let refused = deposit(&app, &merchant, "while-behind").await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(retry_after.as_deref(), Some("4"), "6 s against a 2 s bound");
    assert_eq!(
        error_of(refused).await?,
        ("api_error".to_owned(), "overloaded".to_owned(), None)
    );
    let withdrawal = app
        .post(
            "/v1/withdrawals",
            &merchant.key,
            &json!({"amount": 100, "currency": "USD", "customer": "c"}),
        )
        .send()
        .await?;
    assert_eq!(
        withdrawal.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "withdrawals too"
    );
    let balance = app.get("/v1/balance", &merchant.key).send().await?;
    assert_eq!(balance.status(), StatusCode::OK, "reads are served");
    assert_eq!(
        app.count("transactions").await?,
        1,
        "only the first deposit"
    );
    assert_eq!(
        app.count("idempotency_keys").await?,
        1,
        "the refused key is not taken"
    );

    // The worker caught up: the same request is accepted, once.
    worker.set(300);
    until_shedding(&app, &merchant, false).await?;
    for _ in 0..2 {
        let accepted = deposit(&app, &merchant, "while-behind").await?;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(app.count("transactions").await?, 2);
    drop(worker);
    app.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_bound_admits_whatever_the_wait() -> TestResult {
    let app = spawn_with(
        |config| config.api.shed_after_wait = Duration::ZERO,
        GatewayRegistry::default(),
    )
    .await?;
    let merchant = app.merchant().await?;
    let worker = Worker::start(&app, "behind", 600_000).await?;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(
        deposit(&app, &merchant, "any").await?.status(),
        StatusCode::ACCEPTED
    );
    drop(worker);
    app.stop().await;
    Ok(())
}
