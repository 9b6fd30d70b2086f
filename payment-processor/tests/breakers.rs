//! A running payment processor publishes its circuit breakers to Redis for the console, and
//! withdraws them when it stops (real Postgres, Redis, tansu and the sandbox).

use std::time::Duration;

use paygate_core::gateway_health::{self, BreakerState};
use paygate_sandbox::Knobs;
use serde_json::json;

mod common;
use common::{TestResult, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_processor_publishes_its_breakers_and_withdraws_them_at_shutdown() -> TestResult {
    let w = World::new(
        "Breaker publication",
        Knobs::default(),
        &[("pub-a", "sandbox-json"), ("pub-b", "sandbox-json")],
        json!({"timeout_ms": 5_000, "breaker": {}}),
    )
    .await?;
    let mut redis = redis::Client::open(w.config.redis.url.as_str())?
        .get_connection_manager()
        .await?;
    let prefix = w.config.redis.key_prefix.clone();
    let (stop, task) = w.start().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let published = loop {
        let seen = gateway_health::breakers(&mut redis, &prefix).await?;
        if seen.len() == 2 {
            break seen;
        }
        if tokio::time::Instant::now() > deadline {
            stop.cancel();
            return Err(format!("breakers never published: {seen:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gateways: Vec<&str> = published.iter().map(|b| b.gateway.as_str()).collect();
    assert_eq!(gateways, vec!["pub-a", "pub-b"]);
    assert_eq!(published[0].instance, published[1].instance, "one instance");
    assert!(published
        .iter()
        .all(|b| b.report.state == BreakerState::Closed && b.report.in_flight == 0));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task).await??;
    let left: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(gateway_health::breakers_key(&prefix))
        .query_async(&mut redis)
        .await?;
    assert!(left.is_empty(), "withdrawn at shutdown: {left:?}");
    Ok(())
}
