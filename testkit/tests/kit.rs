//! The kit's own promises: isolation is unique per call, a dropped handle stops its service,
//! `shutdown` reports how the service ended, and a spawned sandbox answers its admin client.

use std::time::Duration;

use paygate_testkit::services::{sandbox_gateway, sandbox_settings, spawn_sandbox};
use paygate_testkit::{isolated_config, Running};
use serde_json::json;

#[tokio::test]
async fn each_isolated_config_has_its_own_database_and_prefixes() -> anyhow::Result<()> {
    let (a, pool_a) = isolated_config().await?;
    let (b, _pool_b) = isolated_config().await?;
    assert_ne!(a.database.url, b.database.url);
    assert_ne!(a.redis.key_prefix, b.redis.key_prefix);
    assert_ne!(a.kafka.topic_prefix, b.kafka.topic_prefix);
    assert_eq!(a.kafka.group_prefix, a.kafka.topic_prefix);
    let database = a.database.url.rsplit('/').next().unwrap_or_default();
    assert!(
        database.starts_with("pgt_"),
        "{database}: scripts/test drops pgt_*"
    );
    // Migrated: the transactions table is there and empty.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
        .fetch_one(&pool_a)
        .await?;
    assert_eq!(rows, 0);
    Ok(())
}

#[tokio::test]
async fn a_dropped_handle_cancels_its_service() -> anyhow::Result<()> {
    let running: Running<anyhow::Error> = Running::spawn("idle", |token| async move {
        token.cancelled().await;
        Ok(())
    });
    let token = running.token();
    assert!(!token.is_cancelled());
    drop(running);
    assert!(token.is_cancelled());
    Ok(())
}

#[tokio::test]
async fn shutdown_reports_the_services_error() -> anyhow::Result<()> {
    let failing: Running<std::io::Error> = Running::spawn("failing", |token| async move {
        token.cancelled().await;
        Err(std::io::Error::other("boom"))
    });
    let error = failing
        .shutdown_within(Duration::from_secs(5))
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        error.contains("failing") && error.contains("boom"),
        "{error}"
    );

    let clean: Running<std::io::Error> = Running::spawn("clean", |token| async move {
        token.cancelled().await;
        Ok(())
    });
    clean.shutdown().await
}

#[tokio::test]
async fn a_spawned_sandbox_answers_its_admin_client() -> anyhow::Result<()> {
    let sandbox = spawn_sandbox(sandbox_settings("http://127.0.0.1:9")).await?;
    sandbox.admin.health().await?;
    let knobs = sandbox
        .admin
        .patch_account_knobs("kit-json", json!({"decline_rate": 1.0}))
        .await?;
    assert_eq!(knobs.decline_rate, 1.0);
    assert_eq!(sandbox.admin.account_stats("kit-json").await?.requests, 0);
    assert_eq!(
        sandbox.admin.endpoint("stats"),
        format!("{}/_admin/stats", sandbox.url)
    );
    let gateway = sandbox.gateway("kit-json", "sandbox-json", &json!({"timeout_ms": 1500}))?;
    assert_eq!(gateway.base_url, format!("{}/kit-json", sandbox.url));
    assert_eq!(gateway.timeout, Duration::from_millis(1500));
    assert!(sandbox_gateway(
        &sandbox.url,
        "kit-x",
        "sandbox-json",
        &json!({"timeout_ms": 0})
    )
    .is_err());
    sandbox.stop().await
}
