//! Admission control: while the workers' messages wait past `api.shed_after_wait_ms`, new
//! deposits and withdrawals are refused with 503 `overloaded` and a `Retry-After`, nothing
//! written; reads go on; once the wait is back under the bound the same request (same
//! `Idempotency-Key`) is accepted. The waits are published to the real Redis as a worker
//! publishes them.

use std::time::Duration;

use chrono::Utc;
use paygate_core::pipeline_wait::{self, WaitReport};
use paygate_gateways::GatewayRegistry;
use redis::aio::ConnectionManager;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{deposit_body, error_of, spawn_with, TestApp, TestMerchant, TestResult};

async fn report(
    app: &TestApp,
    redis: &mut ConnectionManager,
    instance: &str,
    wait_ms: u64,
    age: chrono::Duration,
) -> TestResult {
    let report = WaitReport {
        wait_ms,
        at: Utc::now() - age,
    };
    let prefix = &app.config.redis.key_prefix;
    pipeline_wait::publish(redis, prefix, "pgt.payment-processor", instance, report).await?;
    Ok(())
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

/// Waits (up to 5 s; the API reads the waits every 250 ms) until creates are refused
/// (`shedding`) or admitted again, probing with a create whose amount is invalid: admitted,
/// it is a 400 that writes nothing; refused, a 503.
async fn until_shedding(app: &TestApp, merchant: &TestMerchant, shedding: bool) -> TestResult {
    let probe = json!({"amount": -1, "currency": "USD", "customer": "probe"});
    let want = match shedding {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::BAD_REQUEST,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = app
            .post("/v1/deposits", &merchant.key, &probe)
            .send()
            .await?
            .status();
        if status == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "creates still answered {status}, not {want}, after 5 s"
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
    let mut redis =
        ConnectionManager::new(redis::Client::open(app.config.redis.url.as_str())?).await?;

    // Under the bound, and a stopped worker's stale report past it: admitted.
    report(&app, &mut redis, "busy", 1_500, chrono::Duration::zero()).await?;
    report(
        &app,
        &mut redis,
        "dead",
        60_000,
        chrono::Duration::seconds(10),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    until_shedding(&app, &merchant, false).await?;
    assert_eq!(
        deposit(&app, &merchant, "under").await?.status(),
        StatusCode::ACCEPTED
    );

    // Past it: a create is refused, says how long to wait, and writes nothing.
    report(&app, &mut redis, "behind", 6_000, chrono::Duration::zero()).await?;
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

    // The worker caught up (its next report is under the bound): the same request is
    // accepted, once.
    report(&app, &mut redis, "behind", 300, chrono::Duration::zero()).await?;
    until_shedding(&app, &merchant, false).await?;
    let accepted = deposit(&app, &merchant, "while-behind").await?;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(
        deposit(&app, &merchant, "while-behind").await?.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(app.count("transactions").await?, 2);
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
    let mut redis =
        ConnectionManager::new(redis::Client::open(app.config.redis.url.as_str())?).await?;
    report(
        &app,
        &mut redis,
        "behind",
        600_000,
        chrono::Duration::zero(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        deposit(&app, &merchant, "any").await?.status(),
        StatusCode::ACCEPTED
    );
    app.stop().await;
    Ok(())
}
